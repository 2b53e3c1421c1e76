//! The audit log (`catalogue.audit_log`): every catalogue edit, correction and swap of heads,
//! with who and when, one JSON line each, appended and flushed a whole line at a time. It is
//! never rewritten: rotate it with the system's tools if it grows too large. `/catalogue`
//! and `lookalike catalogue log` show its last lines.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::files;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    /// A Discord user, by id and display name at the time.
    Discord { user: u64, name: String },
    /// The command line, by the operating system's user name.
    Cli { user: String },
}

impl Who {
    /// The command line's user (`$USER`, or "unknown").
    pub fn cli() -> Who {
        Who::Cli { user: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into()) }
    }
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Discord { user, name } => write!(f, "{name} (Discord {user})"),
            Who::Cli { user } => write!(f, "{user} (command line)"),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Added {
        item: String,
        category: String,
    },
    Removed {
        item: String,
    },
    /// A pick under "Wrong category?" (the photo by sha256, as `feedback` keeps it).
    Corrected {
        image: String,
        searched: Vec<String>,
        picked: String,
        moderator: bool,
    },
    /// New heads were loaded into a running service; `re_embedded` when the catalogue's vectors changed with them.
    HeadsSwapped {
        heads_dir: String,
        re_embedded: bool,
    },
    /// A shop's product feed imported (`catalogue import`, `/catalogue-import`): pictures added,
    /// updated and removed.
    Imported {
        feed: String,
        added: usize,
        updated: usize,
        removed: usize,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Added { item, .. } => write!(f, "added {item}"),
            Action::Removed { item } => write!(f, "removed {item}"),
            Action::Corrected { image, searched, picked, moderator } => {
                write!(f, "corrected photo {} from {} to {picked}{}", &image[..12.min(image.len())], searched.join(", "), if *moderator { " (moderator)" } else { "" })
            }
            Action::HeadsSwapped { heads_dir, re_embedded } => write!(f, "loaded new heads from {heads_dir}{}", if *re_embedded { ", catalogue re-embedded" } else { "" }),
            Action::Imported { feed, added, updated, removed } => write!(f, "imported {feed}: {added} added, {updated} updated, {removed} removed"),
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub unix_s: u64,
    pub who: Who,
    #[serde(flatten)]
    pub action: Action,
}

impl std::fmt::Display for Event {
    /// `2026-11-29T17:18:14Z  ops (command line)  removed bag/1.png`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.unix_s);
        write!(f, "{}  {}  {}", humantime::format_rfc3339_seconds(when), self.who, self.action)
    }
}

/// The log file; an empty path turns auditing off.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

/// How much of the log's end `last` reads: about 400 lines.
const TAIL_BYTES: u64 = 64 << 10;

impl AuditLog {
    pub fn open(path: &Path) -> AuditLog {
        AuditLog { path: path.to_path_buf() }
    }

    /// Appends one event, stamped now.
    pub fn record(&self, who: Who, action: Action) -> anyhow::Result<Event> {
        let unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let event = Event { unix_s, who, action };
        if !self.path.as_os_str().is_empty() {
            files::append_line(&self.path, &serde_json::to_vec(&event)?).context("cannot write the audit log (catalogue.audit_log)")?;
        }
        Ok(event)
    }

    /// The newest `n` events (at most ~400), oldest first; reads only the end of the file.
    pub fn last(&self, n: usize) -> anyhow::Result<Vec<Event>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound || self.path.as_os_str().is_empty() => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", self.path.display())),
        };
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(TAIL_BYTES)))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        // Unless the whole file was read, the first line is probably cut.
        let text = String::from_utf8_lossy(&tail);
        let lines = text.lines().skip(usize::from(length > TAIL_BYTES));
        let events: Vec<Event> = lines.filter_map(|line| serde_json::from_str(line).ok()).collect();
        Ok(events[events.len().saturating_sub(n)..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_in_order_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl"));
        assert!(log.last(5).unwrap().is_empty(), "no file yet");
        let moderator = Who::Discord { user: 7, name: "mod".into() };
        log.record(moderator.clone(), Action::Added { item: "bag/1.png".into(), category: "bag".into() }).unwrap();
        // A crash mid-write: half a line, no newline.
        std::fs::OpenOptions::new().append(true).open(dir.path().join("audit.jsonl")).and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"unix_s\": 1, \"wh")).unwrap();
        log.record(Who::Cli { user: "ops".into() }, Action::Removed { item: "bag/1.png".into() }).unwrap();
        let events = log.last(5).unwrap();
        assert_eq!(events.iter().map(|e| e.action.to_string()).collect::<Vec<_>>(), ["added bag/1.png", "removed bag/1.png"]);
        assert_eq!((events[0].who.to_string(), events[1].who.to_string()), ("mod (Discord 7)".to_string(), "ops (command line)".to_string()));
        assert_eq!(log.last(1).unwrap().len(), 1);
        assert_eq!(Event { unix_s: 0, ..events[1].clone() }.to_string(), "1970-01-01T00:00:00Z  ops (command line)  removed bag/1.png");
        let line = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(line.lines().last().unwrap().contains("\"action\":\"removed\""), "{line}");
    }

    #[test]
    fn only_the_end_of_a_long_log_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl"));
        let line = |n: usize| serde_json::to_string(&Event { unix_s: 1, who: Who::Cli { user: "ops".into() }, action: Action::Removed { item: format!("bag/{n}.png") } }).unwrap();
        std::fs::write(dir.path().join("audit.jsonl"), (0..2000).map(|n| line(n) + "\n").collect::<String>()).unwrap();
        let events = log.last(3).unwrap();
        assert_eq!(events.iter().map(|e| e.action.to_string()).collect::<Vec<_>>(), ["removed bag/1997.png", "removed bag/1998.png", "removed bag/1999.png"]);
    }
}
