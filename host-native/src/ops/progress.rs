//! Progress of long transfers (snapshot uploads and downloads): a progress bar on an
//! interactive terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncRead, ReadBuf};

/// How often a non-interactive transfer logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Progress of one transfer of a known size.
pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    next_log: Instant,
    bar: Option<ProgressBar>,
    silent: bool,
}

impl Progress {
    /// Starts reporting a transfer of `total` bytes, described by `label` ("uploading
    /// snapshot"). A bar when stderr is a terminal, log lines otherwise.
    pub fn new(label: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label);
            bar
        });
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            started: now,
            next_log: now + LOG_EVERY,
            bar,
            silent: false,
        }
    }

    /// Counts bytes without reporting them (where another [`Progress`] reports).
    pub fn silent() -> Self {
        let now = Instant::now();
        Progress {
            label: "",
            total: 0,
            done: 0,
            started: now,
            next_log: now,
            bar: None,
            silent: true,
        }
    }

    /// Counts `n` more bytes done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if !self.silent && Instant::now() >= self.next_log {
            self.next_log = Instant::now() + LOG_EVERY;
            tracing::info!(
                done_bytes = self.done,
                total_bytes = self.total,
                "{}: {} of {} ({:.0}%), {}/s",
                self.label,
                human_bytes(self.done),
                human_bytes(self.total),
                self.done as f64 * 100.0 / self.total.max(1) as f64,
                human_bytes(self.rate() as u64),
            );
        }
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    /// Ends the report (clears the bar) and returns the time taken.
    pub fn finish(self) -> Duration {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1.5 GiB`, `12.0 MiB`, `300 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An [`AsyncRead`] that reports the bytes read through it to a [`Progress`].
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R> ProgressReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader { inner, progress }
    }

    /// The progress so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Gives back the progress (e.g. to finish it).
    pub fn into_progress(self) -> Progress {
        self.progress
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.progress.advance(read as u64);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(300), "300 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[tokio::test]
    async fn the_reader_counts_every_byte() {
        let data = vec![7u8; 100_000];
        let mut reader = ProgressReader::new(&data[..], Progress::new("test", 100_000));
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        assert_eq!(reader.progress().done(), 100_000);
    }
}
