//! Segment filters on both databases (in progress).
