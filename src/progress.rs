//! Progress of long jobs: a bar on a terminal; elsewhere (a log file, a pipe, a supervisor) a
//! plain line every few seconds with the same figures, so `lookalike demo > log` shows life.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Seconds between two progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A progress bar of `len` steps drawn with `template` (indicatif's syntax; `{pos}/{len}`,
/// `{per_sec}` and `{eta}` make useful log lines too).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    if std::io::stderr().is_terminal() {
        return ProgressBar::new(len).with_style(style);
    }
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::term_like_with_hz(Box::new(Lines::new(std::io::stderr(), LINE_EVERY)), 1)).with_style(style)
}

/// A terminal that is not one: indicatif's redraws become whole lines, at most one per
/// `every`, cursor movements and clearing are ignored.
struct Lines<W> {
    out: Mutex<(W, Option<Instant>)>,
    every: Duration,
}

impl<W> Lines<W> {
    fn new(out: W, every: Duration) -> Lines<W> {
        Lines { out: Mutex::new((out, None)), every }
    }
}

impl<W> std::fmt::Debug for Lines<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lines")
    }
}

impl<W: Write + Send> TermLike for Lines<W> {
    fn width(&self) -> u16 {
        120
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.write_str(line)
    }

    fn write_str(&self, text: &str) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if text.trim().is_empty() || out.1.is_some_and(|last| now.duration_since(last) < self.every) {
            return Ok(());
        }
        out.1 = Some(now);
        writeln!(out.0, "{}", text.trim_end())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn off_a_terminal_progress_is_whole_lines_at_most_one_per_period() {
        let out = Shared::default();
        let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::term_like_with_hz(Box::new(Lines::new(out.clone(), Duration::from_millis(200))), 20))
            .with_style(ProgressStyle::with_template("eval {pos}/{len} images").unwrap());
        for step in 0..100 {
            bar.inc(1);
            if step % 10 == 0 {
                bar.tick();
            }
            std::thread::sleep(Duration::from_millis(6));
        }
        bar.finish();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines.is_empty() && lines.len() <= 5, "about 0.6 s at one line per 0.2 s: {lines:?}");
        assert!(lines.iter().all(|l| l.starts_with("eval ") && l.ends_with(" images") && !l.contains('\x1b')), "{lines:?}");
    }
}
