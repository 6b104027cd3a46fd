//! A/B statistics: the binomial comparison of SPEC section 5 (in progress).
