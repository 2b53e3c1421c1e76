//! `/reindex` (moderators): re-index the catalogue with a progress message edited as it goes.

use super::*;

/// Shortest gap between two edits of the progress message (Discord rate-limits edits).
pub(super) const PROGRESS_EDIT_GAP: Duration = Duration::from_millis(1500);

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

pub(super) fn progress_text(progress: &Progress) -> String {
    let share = if progress.total == 0 { 1.0 } else { progress.done as f64 / progress.total as f64 };
    let filled = (share * 20.0).round() as usize;
    let eta = progress.eta_s().map_or("…".to_string(), |s| format!("{s:.0} s"));
    format!("Re-indexing the catalogue…\n`[{}{}]` {}/{} images to embed · {:.1} images/s · ETA {eta}", "#".repeat(filled), ".".repeat(20 - filled), progress.done, progress.total, progress.rate())
}

pub(super) async fn reindex(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    if !is_moderator(command.member.as_deref(), bot.config.discord.moderator_role_id) {
        return respond(ctx, command, "Only moderators (Manage Server, or the moderator role) can re-index the catalogue.".into(), true).await;
    }
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer /reindex");
    }
    let (events, mut progress) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let service = bot.service.clone();
    let who = crate::audit::Who::Discord { user: command.user.id.get(), name: command.user.name.clone() };
    let job = tokio::task::spawn_blocking(move || {
        service.upkeep().reindex_by(who, &mut |p| {
            let _ = events.send(*p);
        })
    });
    let mut last_edit: Option<Instant> = None;
    while let Some(event) = progress.recv().await {
        if last_edit.is_none_or(|t| t.elapsed() >= PROGRESS_EDIT_GAP) {
            last_edit = Some(Instant::now());
            let _ = command.edit_response(&ctx.http, EditInteractionResponse::new().content(progress_text(&event))).await;
        }
    }
    let text = match job.await {
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
