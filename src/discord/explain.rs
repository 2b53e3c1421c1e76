//! The one place that decides what a Discord user reads when a search, a re-index or a catalogue
//! edit fails: never a path, a type name, a config key or a backtrace. (A command's own
//! refusals, made before the core is called — a cooldown, an expired button, a missing photo —
//! are worded where they are made.)

use super::*;

/// What the user reads for each way a search can fail; never a path, a backtrace or a token.
pub(super) fn explain(error: &SearchError) -> String {
    match error {
        SearchError::Busy(_, seconds) => format!("I'm busy with other searches right now; try again in {seconds} s."),
        SearchError::Image(err) => format!("I couldn't use that photo: {}.", describe_image_error(err)),
        SearchError::NoIndex(_) => "The catalogue has not been indexed yet: ask a moderator to run /reindex.".to_string(),
        SearchError::UnknownCategory(category, _) => format!("The catalogue has no category `{}` any more.", reply::escape(category, 50)),
        SearchError::Unavailable(_) => "The catalogue database is unreachable right now; try again shortly.".to_string(),
        SearchError::Timeout(_) => "That search took too long; please try again.".to_string(),
        SearchError::Models(_) => "Something went wrong on my side; please try again.".to_string(),
        SearchError::Empty => "Send a photo, some words (\"red canvas totes under $20\"), or both.".to_string(),
    }
}

/// What a re-index asks of the moderator who started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upkeep {
    Reindex,
    Edit,
}

/// What a moderator reads when a re-index (`/reindex`) or a catalogue edit (and its re-index)
/// does not finish. The machine's own failures may name server paths: they go to the log, and
/// the moderator is pointed there.
pub(super) fn explain_reindex(error: &ReindexError, job: Upkeep) -> String {
    match (error, job) {
        (ReindexError::AlreadyRunning(_), Upkeep::Reindex) => "A re-index is already running; wait for it to finish.".to_string(),
        (ReindexError::AlreadyRunning(_), Upkeep::Edit) => "a re-index is running; try again when it finishes.".to_string(),
        (ReindexError::Refused(why), _) => reply::escape(why, 1500),
        (ReindexError::Interrupted { .. }, Upkeep::Reindex) => {
            "The re-index was interrupted: the bot is restarting. What it embedded is kept; /reindex again after the restart and it goes on from there.".to_string()
        }
        (ReindexError::Interrupted { .. } | ReindexError::Failed(_), _) => {
            tracing::error!(cause = %format!("{error:#}"), outcome = error.outcome(), "re-index or catalogue edit failed");
            match job {
                Upkeep::Reindex => "The re-index failed; the previous index is still in use. The bot's log says why.".to_string(),
                Upkeep::Edit => "the edit failed; the bot's log says why.".to_string(),
            }
        }
    }
}

/// An image problem in the user's terms: sizes in MB, no decoder internals, no config keys.
pub(super) fn describe_image_error(error: &ImageError) -> String {
    match error {
        ImageError::Empty => "the file is empty".to_string(),
        ImageError::TooLarge { bytes, max } => format!("it is {} MB and the limit is {} MB", imaging::mb(*bytes), imaging::mb(*max)),
        ImageError::TooManyPixels { width, height, max } => format!("it is {width} x {height} pixels and the limit is {} megapixels", max / 1_000_000),
        ImageError::Unsupported(_) => "it is not a JPEG, PNG, WebP, GIF or BMP image".to_string(),
        ImageError::Corrupt(_) => "the image data is damaged (cut short, or not what its name says)".to_string(),
        ImageError::Io { .. } => "it could not be read".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_users_read_names_no_path_type_or_config_key() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "/srv/lookalike/runs/index/gen-3/vectors.f32 missing");
        let cases: Vec<(SearchError, &str)> = vec![
            (SearchError::Image(ImageError::Empty), "the file is empty"),
            (SearchError::Image(ImageError::TooLarge { bytes: 12 << 20, max: 8 << 20 }), "it is 12 MB and the limit is 8 MB"),
            (SearchError::Image(ImageError::TooManyPixels { width: 9000, height: 9000, max: 40_000_000 }), "limit is 40 megapixels"),
            (SearchError::Image(ImageError::Corrupt("Format error decoding Png: CRC error".into())), "damaged"),
            (SearchError::Image(ImageError::Unsupported("tiff".into())), "not a JPEG, PNG"),
            (SearchError::Image(ImageError::Io { source: io() }), "could not be read"),
            (SearchError::NoIndex("no index in /srv/lookalike/runs/index".into()), "/reindex"),
            (SearchError::Models("tensor shape mismatch at src/vision/mod.rs:120".into()), "went wrong on my side"),
            (SearchError::Busy(8, 3), "try again in 3 s"),
            (SearchError::Unavailable("cannot connect to postgres://lookalike@db.internal:5432/shop (index.postgres_url)".into()), "unreachable right now; try again shortly"),
        ];
        for (error, expected) in cases {
            let text = explain(&error);
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("/srv") && !text.contains(".rs") && !text.contains("limits.") && !text.contains("index.postgres") && !text.contains("postgres://") && !text.contains('{'), "{text}");
        }
    }
}
