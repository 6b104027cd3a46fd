//! Repeated external ids in one contacts import, found in bounded memory.
//!
//! A file that lists a contact twice is merged (the later row's values win,
//! its empty cells keep the earlier row's); a marketer who exported one
//! contact twice should hear about it, with both lines. Remembering every id
//! of a ten-million-row file in one hash map took 407 MB (measured), against
//! the rest of the import's few batches, so the map has a budget: when it is
//! full, its entries are written, sorted by hash, to an unnamed temporary
//! file (a "run"), and the map starts again.
//!
//! A repeat within the map's current stretch of the file is warned of at
//! once; a repeat across two stretches is found at the end by merging the
//! sorted runs, one record of each run in memory at a time. Each run keeps a
//! hash's first and last line in its stretch, so the warning names the line
//! the id was last seen on before, as the in-memory case does.
//!
//! Ids are keyed by a 64-bit hash: two different ids share one with odds of
//! about one in 40 million at a million rows (n²/2^65), which would print
//! one wrong warning and change no data.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// Ids kept in memory before a stretch is written out. With ids of about 20
/// bytes, ten million ids and a million repeats peaked at 52 MB of resident
/// memory (the test process's own 6 MB included), where one map of every id
/// took 407 MB; the peak no longer grows with the file.
pub(super) const IN_MEMORY: usize = 1 << 18;

/// Where one id was seen within a stretch of the file.
struct Seen {
    first: u64,
    last: u64,
    id: Box<str>,
}

/// The ids of one import seen so far (see the module's doc).
pub(super) struct SeenIds {
    budget: usize,
    stretch: HashMap<u64, Seen, std::hash::BuildHasherDefault<super::Fnv>>,
    runs: Vec<File>,
}

/// A repeat found when the import ends: `id` on `line`, last seen on `earlier`.
#[derive(Debug, PartialEq)]
pub(super) struct Repeat {
    pub id: String,
    pub earlier: u64,
    pub line: u64,
}

impl SeenIds {
    pub(super) fn new(budget: usize) -> Self {
        SeenIds {
            budget: budget.max(1),
            stretch: HashMap::default(),
            runs: Vec::new(),
        }
    }

    /// Records `id` (hashed as `hash`) on `line`; the line it was last seen
    /// on, if that was within the current stretch. Repeats across
    /// stretches come from [`SeenIds::finish`].
    pub(super) fn repeat(
        &mut self,
        hash: u64,
        id: &str,
        line: u64,
    ) -> std::io::Result<Option<u64>> {
        if let Some(seen) = self.stretch.get_mut(&hash) {
            return Ok(Some(std::mem::replace(&mut seen.last, line)));
        }
        if self.stretch.len() >= self.budget {
            self.spill()?;
        }
        self.stretch.insert(
            hash,
            Seen {
                first: line,
                last: line,
                id: id.into(),
            },
        );
        Ok(None)
    }

    /// Writes the current stretch out as a run sorted by hash.
    fn spill(&mut self) -> std::io::Result<()> {
        let mut entries: Vec<(u64, Seen)> = self.stretch.drain().collect();
        entries.sort_unstable_by_key(|(h, _)| *h);
        let mut file = BufWriter::with_capacity(1 << 16, tempfile::tempfile()?);
        for (hash, seen) in &entries {
            write_record(&mut file, *hash, seen)?;
        }
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        Ok(())
    }

    /// The repeats across stretches: how many, and the first `keep` of them
    /// by line (held in a bounded heap: a file of a million repeats keeps
    /// only what the report shows). None when the whole file fit in one
    /// stretch (nothing was written out).
    pub(super) fn finish(mut self, keep: usize) -> std::io::Result<(u64, Vec<Repeat>)> {
        if self.runs.is_empty() {
            return Ok((0, Vec::new()));
        }
        self.spill()?;
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .drain(..)
            .map(|f| BufReader::with_capacity(1 << 16, f))
            .collect();
        // The next record of each run, smallest hash first, then file order.
        let mut heads = BinaryHeap::new();
        let mut pending: Vec<Option<(u64, Seen)>> = Vec::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            let next = read_record(r)?;
            if let Some((hash, _)) = &next {
                heads.push(Reverse((*hash, i)));
            }
            pending.push(next);
        }
        let mut count = 0u64;
        // The `keep` smallest (line, earlier, id) so far, the largest on top.
        let mut first: BinaryHeap<(u64, u64, Box<str>)> =
            BinaryHeap::with_capacity(keep.saturating_add(1).min(1 << 16));
        let mut previous: Option<(u64, u64)> = None; // (hash, its last line so far)
        while let Some(Reverse((hash, i))) = heads.pop() {
            let (_, seen) = pending[i].take().expect("a head has its record");
            if let Some((h, earlier)) = previous
                && h == hash
            {
                count += 1;
                if first.len() < keep || first.peek().is_some_and(|top| seen.first < top.0) {
                    first.push((seen.first, earlier, seen.id));
                    if first.len() > keep {
                        first.pop();
                    }
                }
            }
            previous = Some((hash, seen.last));
            pending[i] = read_record(&mut readers[i])?;
            if let Some((next, _)) = &pending[i] {
                heads.push(Reverse((*next, i)));
            }
        }
        let first = first.into_sorted_vec().into_iter();
        Ok((
            count,
            first
                .map(|(line, earlier, id)| Repeat {
                    id: id.into(),
                    earlier,
                    line,
                })
                .collect(),
        ))
    }
}

fn write_record(w: &mut impl Write, hash: u64, seen: &Seen) -> std::io::Result<()> {
    let id = seen.id.as_bytes();
    w.write_all(&hash.to_le_bytes())?;
    w.write_all(&seen.first.to_le_bytes())?;
    w.write_all(&seen.last.to_le_bytes())?;
    w.write_all(&(id.len() as u32).to_le_bytes())?;
    w.write_all(id)
}

/// The next record of a run; `None` at its end.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<(u64, Seen)>> {
    let mut head = [0u8; 28];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")) as usize;
    let mut id = vec![0u8; len];
    r.read_exact(&mut id)?;
    let id = String::from_utf8(id)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((
        word(0),
        Seen {
            first: word(8),
            last: word(16),
            id: id.into(),
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `ids` (one a line from line 2, as after a CSV header) and
    /// returns every repeat, whether found at once or at the end.
    fn repeats(ids: &[&str], budget: usize) -> Vec<(String, u64, u64)> {
        let mut seen = SeenIds::new(budget);
        let mut found = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let line = i as u64 + 2;
            if let Some(earlier) = seen.repeat(super::super::lane_hash(id), id, line).unwrap() {
                found.push((id.to_string(), earlier, line));
            }
        }
        let (count, end) = seen.finish(usize::MAX).unwrap();
        assert_eq!(count as usize, end.len());
        for r in end {
            found.push((r.id, r.earlier, r.line));
        }
        found.sort_by_key(|r| r.2);
        found
    }

    #[test]
    fn a_repeat_names_the_line_last_seen_whatever_the_budget() {
        let ids = ["a", "b", "a", "c", "d", "b", "a", "e", "f", "g", "c", "a"];
        let expected = vec![
            ("a".to_string(), 2, 4),
            ("b".to_string(), 3, 7),
            ("a".to_string(), 4, 8),
            ("c".to_string(), 5, 12),
            ("a".to_string(), 8, 13),
        ];
        // One stretch (all in memory), and stretches of 1, 2 and 3 ids:
        // every repeat across them is found at the end with the same lines.
        for budget in [usize::MAX, 1, 2, 3] {
            assert_eq!(repeats(&ids, budget), expected, "budget {budget}");
        }
    }

    #[test]
    fn distinct_ids_repeat_nothing_across_many_runs() {
        let ids: Vec<String> = (0..5000).map(|i| format!("id-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert!(repeats(&ids, 64).is_empty());
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let mut seen = SeenIds::new(100);
        for i in 0..10_000u64 {
            let id = format!("c{i}");
            seen.repeat(super::super::lane_hash(&id), &id, i + 2)
                .unwrap();
            assert!(seen.stretch.len() <= 100);
        }
        assert_eq!(seen.runs.len(), 99);
        // Every id again: each is a repeat of its first line, found at the end.
        for i in 0..10_000u64 {
            let id = format!("c{i}");
            seen.repeat(super::super::lane_hash(&id), &id, 10_002 + i)
                .unwrap();
        }
        // All found, the first five by line kept.
        let (count, first) = seen.finish(5).unwrap();
        assert_eq!(count, 10_000);
        let lines: Vec<(u64, u64)> = first.iter().map(|r| (r.earlier, r.line)).collect();
        assert_eq!(
            lines,
            [
                (2, 10_002),
                (3, 10_003),
                (4, 10_004),
                (5, 10_005),
                (6, 10_006)
            ]
        );
        assert_eq!(first[0].id, "c0");
    }

    /// The process's peak resident memory (kB), from /proc (Linux).
    fn peak_rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Benchmark: ten million distinct ids of a realistic length, then a
    /// tenth of them again, at the import's own budget; prints the peak
    /// resident memory. Run alone:
    /// `cargo test --release --workspace --lib seen_ids::tests::ten_million -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: ten million ids"]
    fn ten_million_ids_in_bounded_memory() {
        let before = peak_rss_kb();
        let started = std::time::Instant::now();
        let mut seen = SeenIds::new(IN_MEMORY);
        let mut inline = 0u64;
        let id = |i: u64| {
            format!(
                "customer-{:012}",
                i.wrapping_mul(0x9E37_79B9) % 10_000_000_000
            )
        };
        for i in 0..10_000_000u64 {
            let id = id(i);
            inline += seen
                .repeat(super::super::lane_hash(&id), &id, i + 2)
                .unwrap()
                .is_some() as u64;
        }
        for i in (0..10_000_000u64).step_by(10) {
            let id = id(i);
            inline += seen
                .repeat(super::super::lane_hash(&id), &id, 10_000_002 + i / 10)
                .unwrap()
                .is_some() as u64;
        }
        let runs = seen.runs.len();
        let found = seen.finish(1000).unwrap().0 + inline;
        println!(
            "10,000,000 ids + 1,000,000 repeats: {found} repeats found, {runs} runs, {:.1} s, peak RSS {} MB (was {} MB before)",
            started.elapsed().as_secs_f64(),
            peak_rss_kb() / 1024,
            before / 1024
        );
        assert_eq!(found, 1_000_000);
    }
}
