//! What the workers let in, and the oracle: per key and window of the true
//! clock, admitted ≤ limit.
//!
//! A worker reads the clock just before and just after the limiter's
//! answer; an admission whose two readings fall in different windows
//! happened in one of them. The oracle places such admissions where they
//! fit (earliest window first, which is optimal for intervals of two
//! adjacent windows), so it never blames the limiter for the harness's own
//! uncertainty, and never excuses more than that uncertainty.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

#[derive(Debug, Default)]
pub(crate) struct Admissions {
    /// (cell, key, window before, window after) → admissions.
    admitted: HashMap<(usize, u32, u64, u64), u64>,
    offered: HashMap<usize, u64>,
    max_wait_us: HashMap<usize, u64>,
    phases: HashMap<(usize, u8), u64>,
    /// Cell names and limits, from the spec the lines were made under.
    cells: Vec<(String, u64, u64)>,
    /// Requests decided without Redis, all workers.
    pub decided_locally: u64,
    /// A worker killed on purpose may end with a partial line.
    pub killed_allowed: bool,
}

#[derive(Debug)]
pub(crate) struct Overshoot {
    pub cell: String,
    pub key: u32,
    pub window: u64,
    pub admitted: u64,
    pub limit: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub overshoots: Vec<Overshoot>,
    /// (cell, windows checked, admissions, worst admitted ÷ limit).
    pub cells: Vec<(String, usize, u64, f64)>,
}

impl Verdict {
    pub(crate) fn worst_ratio(&self) -> f64 {
        self.cells.iter().map(|c| c.3).fold(0.0, f64::max)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (cell, windows, admitted, worst) in &self.cells {
            writeln!(
                f,
                "  {cell:<18} {windows:>6} key-windows  {admitted:>8} let in  worst {worst:.3} × limit"
            )?;
        }
        for o in self.overshoots.iter().take(10) {
            writeln!(
                f,
                "  OVER {} key {} window {}: {} > {}",
                o.cell, o.key, o.window, o.admitted, o.limit
            )?;
        }
        Ok(())
    }
}

impl Admissions {
    pub(crate) fn set_cells(&mut self, spec: &serde_json::Value) {
        self.cells = spec["cells"]
            .as_array()
            .map(|cells| {
                cells
                    .iter()
                    .map(|c| {
                        let limit = c["limit"].as_u64().unwrap_or(0);
                        let changed = c["limit_change"]["limit"].as_u64().unwrap_or(0);
                        (
                            c["name"].as_str().unwrap_or("?").to_owned(),
                            limit.max(changed),
                            c["window_ms"].as_u64().unwrap_or(1_000),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
    }

    pub(crate) fn read(&mut self, text: &str) -> Result<(), String> {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let fields: Vec<u64> = line
                .split(' ')
                .skip(1)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .or_else(|e| {
                    if self.killed_allowed && i + 1 == lines.len() {
                        Ok(Vec::new())
                    } else {
                        Err(format!("bad line {line:?}: {e}"))
                    }
                })?;
            match (line.chars().next(), fields.as_slice()) {
                (Some('A'), [cell, key, before, after, count]) => {
                    *self
                        .admitted
                        .entry((*cell as usize, *key as u32, *before, *after))
                        .or_default() += count;
                }
                (Some('O'), [cell, count]) => {
                    *self.offered.entry(*cell as usize).or_default() += count
                }
                (Some('W'), [cell, wait]) => {
                    let max = self.max_wait_us.entry(*cell as usize).or_default();
                    *max = (*max).max(*wait);
                }
                (Some('P'), [cell, phase, count]) => {
                    *self
                        .phases
                        .entry((*cell as usize, *phase as u8))
                        .or_default() += count
                }
                (Some('L'), [count]) => self.decided_locally += count,
                _ if self.killed_allowed && i + 1 == lines.len() => {}
                _ => return Err(format!("bad line {line:?}")),
            }
        }
        Ok(())
    }

    fn index(&self, name: &str) -> usize {
        self.cells
            .iter()
            .position(|c| c.0 == name)
            .unwrap_or_else(|| panic!("no cell {name}"))
    }

    /// Admissions per (key, window) of one cell, each ambiguous admission
    /// placed as early as it fits under `limit`.
    fn placed(&self, cell: usize, limit: u64) -> BTreeMap<(u32, u64), u64> {
        let mut definite: BTreeMap<(u32, u64), u64> = BTreeMap::new();
        let mut straddling: BTreeMap<(u32, u64), u64> = BTreeMap::new();
        for (&(c, key, before, after), &count) in &self.admitted {
            if c != cell {
                continue;
            }
            if before == after {
                *definite.entry((key, before)).or_default() += count;
            } else {
                // A wait is far shorter than a window: `after` is `before + 1`.
                *straddling.entry((key, before)).or_default() += count;
            }
        }
        let mut placed = definite;
        for ((key, window), count) in straddling {
            let here = placed.entry((key, window)).or_default();
            let fits = limit.saturating_sub(*here).min(count);
            *here += fits;
            *placed.entry((key, window + 1)).or_default() += count - fits;
        }
        placed
    }

    pub(crate) fn verdict(&self) -> Verdict {
        let mut verdict = Verdict::default();
        for (index, (name, limit, _)) in self.cells.iter().enumerate() {
            let placed = self.placed(index, *limit);
            let mut worst = 0.0f64;
            let mut total = 0;
            for (&(key, window), &admitted) in &placed {
                total += admitted;
                worst = worst.max(admitted as f64 / *limit as f64);
                if admitted > *limit {
                    verdict.overshoots.push(Overshoot {
                        cell: name.clone(),
                        key,
                        window,
                        admitted,
                        limit: *limit,
                    });
                }
            }
            verdict
                .cells
                .push((name.clone(), placed.len(), total, worst));
        }
        verdict
    }

    pub(crate) fn total(&self, name: &str) -> u64 {
        let cell = self.index(name);
        self.admitted
            .iter()
            .filter(|(k, _)| k.0 == cell)
            .map(|(_, v)| v)
            .sum()
    }

    /// Admissions of a one-key cell per window (ambiguous ones placed).
    pub(crate) fn by_window(&self, name: &str) -> BTreeMap<u64, u64> {
        let cell = self.index(name);
        let mut windows = BTreeMap::new();
        for ((_, window), admitted) in self.placed(cell, self.cells[cell].1) {
            *windows.entry(window).or_default() += admitted;
        }
        windows
    }

    /// How full a one-key cell's windows are, skipping the first and last
    /// (the run starts and ends inside them). An admission counts in the
    /// window of its second reading: a token is spent just before the
    /// answer, while the first reading may precede it by a whole wait.
    pub(crate) fn fill_of_whole_windows(&self, name: &str) -> f64 {
        let cell = self.index(name);
        let limit = self.cells[cell].1 as f64;
        let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
        for (&(c, _, _, after), &count) in &self.admitted {
            if c == cell {
                *windows.entry(after).or_default() += count;
            }
        }
        let (Some(&first), Some(&last)) = (windows.keys().next(), windows.keys().next_back())
        else {
            return 0.0;
        };
        if last < first + 2 {
            return 0.0;
        }
        (first + 1..last)
            .map(|w| windows.get(&w).copied().unwrap_or(0) as f64 / limit)
            .fold(f64::MAX, f64::min)
    }

    pub(crate) fn phases(&self, name: &str) -> (u64, u64) {
        let cell = self.index(name);
        (
            self.phases.get(&(cell, 0)).copied().unwrap_or(0),
            self.phases.get(&(cell, 1)).copied().unwrap_or(0),
        )
    }

    /// The longest wait of each cell, in ms.
    pub(crate) fn waits_ms(&self) -> Vec<(String, u64)> {
        let mut waits: Vec<_> = self
            .max_wait_us
            .iter()
            .map(|(cell, us)| (self.cells[*cell].0.clone(), us / 1_000))
            .collect();
        waits.sort();
        waits
    }

    pub(crate) fn longest_wait_ms(&self) -> u64 {
        self.max_wait_us.values().copied().max().unwrap_or(0) / 1_000
    }

    pub(crate) fn offered(&self, name: &str) -> u64 {
        self.offered.get(&self.index(name)).copied().unwrap_or(0)
    }
}
