//! `/reindex` (moderators): re-index the catalogue with a progress message edited as it goes.

use super::*;

/// Shortest gap between two edits of the progress message (Discord rate-limits edits).
const PROGRESS_EDIT_GAP: Duration = Duration::from_millis(1500);

pub(super) fn register() -> CreateCommand {
    CreateCommand::new("reindex").description("Re-index the catalogue (moderators)").default_member_permissions(Permissions::MANAGE_GUILD)
}

/// Manage Server (or Administrator), or the configured moderator role: checked at every call.
pub(super) fn is_moderator(member: Option<&Member>, moderator_role: u64) -> bool {
    member.is_some_and(|member| {
        let permissions = member.permissions.unwrap_or_else(Permissions::empty);
        permissions.manage_guild() || permissions.administrator() || (moderator_role != 0 && member.roles.contains(&RoleId::new(moderator_role)))
    })
}

/// A 20-character bar, `[####......]`, for `done` of `total`.
pub(super) fn bar(done: usize, total: usize) -> String {
    let filled = (done * 20).checked_div(total).map_or(20, |f| f.min(20));
    format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
}

pub(super) fn progress_text(progress: &Progress) -> String {
    let eta = progress.eta_s().map_or("…".to_string(), |s| format!("{s:.0} s"));
    format!("Re-indexing the catalogue…\n`{}` {}/{} images to embed · {:.1} images/s · ETA {eta}", bar(progress.done, progress.total), progress.done, progress.total, progress.rate())
}

/// Runs `job` (a re-index or an import, given a callback for its progress events) on a
/// blocking thread, editing the deferred reply with `text` of its latest event at most every
/// [`PROGRESS_EDIT_GAP`]; returns what the job returned, or why its thread failed.
pub(super) async fn with_progress_edits<E: Send + 'static, T: Send + 'static>(
    ctx: &Context,
    command: &CommandInteraction,
    job: impl FnOnce(&mut dyn FnMut(E)) -> T + Send + 'static,
    text: impl Fn(&E) -> String,
) -> Result<T, tokio::task::JoinError> {
    let (events, mut progress) = tokio::sync::mpsc::unbounded_channel::<E>();
    let job = tokio::task::spawn_blocking(move || {
        job(&mut |event| {
            let _ = events.send(event);
        })
    });
    let mut last_edit: Option<Instant> = None;
    while let Some(event) = progress.recv().await {
        if last_edit.is_none_or(|t| t.elapsed() >= PROGRESS_EDIT_GAP) {
            last_edit = Some(Instant::now());
            let _ = command.edit_response(&ctx.http, EditInteractionResponse::new().content(text(&event))).await;
        }
    }
    job.await
}

pub(super) async fn reindex(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    if !is_moderator(command.member.as_deref(), bot.config.discord.moderator_role_id) {
        return respond(ctx, command, "Only moderators (Manage Server, or the moderator role) can re-index the catalogue.".into(), true).await;
    }
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer /reindex");
    }
    let service = bot.service.clone();
    let who = crate::audit::Who::Discord { user: command.user.id.get(), name: command.user.name.clone() };
    let done = with_progress_edits(ctx, command, move |progress: &mut dyn FnMut(Progress)| service.upkeep().reindex_by(who, &mut |p| progress(*p)), progress_text).await;
    let text = match done {
        Ok(Ok(summary)) => format!("Re-index done.\n```\n{}```", reply::escape(&render_summary(&summary, Audience::Chat), 1800).replace("\\", "")),
        Ok(Err(err)) => explain::explain_reindex(&err, explain::Upkeep::Reindex),
        Err(err) => {
            tracing::error!(cause = %err, "re-index task failed");
            "The re-index failed; the previous index is still in use.".to_string()
        }
    };
    if let Err(err) = command.edit_response(&ctx.http, EditInteractionResponse::new().content(text).allowed_mentions(reply::no_pings())).await {
        tracing::warn!(cause = %err, "cannot report the re-index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_like_a_bar() {
        let text = progress_text(&Progress { done: 5, total: 10, elapsed_s: 1.0 });
        assert!(text.contains("`[##########..........]` 5/10") && text.contains("5.0 images/s") && text.contains("ETA 1 s"), "{text}");
    }
}
