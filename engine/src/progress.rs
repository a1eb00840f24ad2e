//! Progress on stderr: a live bar on a terminal, plain lines otherwise
//! (at the start, at every quarter, and at the end of each stage).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shuffle_client::protocol::units::human_bytes;

/// Where progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, lines otherwise.
    Auto,
    /// Nothing.
    Off,
}

/// Creates one progress reporter per stage.
#[derive(Clone, Debug)]
pub struct Progress {
    mode: ProgressMode,
    fancy: bool,
    /// One display for every stage's bar, so they redraw together.
    bars: MultiProgress,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        Progress {
            mode,
            fancy: std::io::stderr().is_terminal(),
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }

    /// A line of news (a worker joined...), unless progress is off.
    pub fn say(&self, msg: String) {
        if self.mode == ProgressMode::Auto {
            if self.fancy {
                let _ = self.bars.println(msg);
            } else {
                eprintln!("{msg}");
            }
        }
    }

    /// Starts reporting a stage of `total` tasks.
    pub fn stage(&self, name: &str, total: u64) -> Arc<StageProgress> {
        let bar = (self.mode == ProgressMode::Auto && self.fancy).then(|| {
            let bar = self.bars.add(ProgressBar::new(total));
            let style = ProgressStyle::with_template(
                "{prefix:>12} [{bar:24}] {pos}/{len} tasks {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(name.to_string());
            bar
        });
        let plain = self.mode == ProgressMode::Auto && !self.fancy;
        if plain {
            eprintln!("[{name}] started: {total} tasks");
        }
        Arc::new(StageProgress {
            name: name.to_string(),
            total,
            done: AtomicU64::new(0),
            bar,
            plain,
            started: Instant::now(),
        })
    }
}

/// Progress of one stage; shared by its tasks.
#[derive(Debug)]
pub struct StageProgress {
    name: String,
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    plain: bool,
    started: Instant,
}

impl StageProgress {
    /// One more task finished.
    pub fn task_done(&self) {
        let done = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.plain && self.total > 0 {
            let quarter = |n: u64| n * 4 / self.total;
            if quarter(done) != quarter(done - 1) && done < self.total {
                eprintln!("[{}] {done}/{} tasks", self.name, self.total);
            }
        }
    }

    /// Live figures: tasks running, bytes read from and written to the
    /// shuffle so far (bar only; plain output stays at quarters).
    pub fn figures(&self, running: u64, read: u64, written: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{running} running, read {}, wrote {}",
                human_bytes(read),
                human_bytes(written)
            ));
        }
    }

    /// The stage starts over (its region restarted).
    pub fn reset(&self) {
        self.done.store(0, Ordering::Release);
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        } else if self.plain {
            eprintln!("[{}] restarting: 0/{} tasks", self.name, self.total);
        }
    }

    /// A note shown beside the bar (for example a retry).
    pub fn note(&self, msg: String) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None if self.plain => eprintln!("[{}] {msg}", self.name),
            None => {}
        }
    }

    /// The stage is over.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        } else if self.plain {
            eprintln!(
                "[{}] done: {} tasks in {:.2}s",
                self.name,
                self.done.load(Ordering::Acquire),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
