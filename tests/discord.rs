//! The bot end to end: the real serenity client, pointed through `discord.api_proxy` at a fake
//! Discord on loopback (REST, CDN and websocket gateway), with the real search service on the
//! offline kit's backbones. One bot serves every scenario in turn, as a server would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{picture, png, write_catalogue, World};

#[path = "common/fake_discord.rs"]
mod fake_discord;
use fake_discord::{
    attachment, autocomplete_interaction, button_interaction, callback_of, command_interaction, embeds, is_reply_to, member, message, select_interaction, slash_search, user, FakeDiscord, Invocation,
    Recorded, BOT_USER, SHOPPER,
};

const WAIT: Duration = Duration::from_secs(60);
/// Manage Server.
const MANAGE_GUILD: u64 = 1 << 5;

/// Categories of the hit embeds (every embed after the summary).
fn hit_categories(recorded: &Recorded) -> Vec<String> {
    embeds(recorded)[1..].iter().map(|e| e["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Category").unwrap()["value"].as_str().unwrap().to_string()).collect()
}

/// A `/catalogue...` command with `options` (and the photo `resolved`, for `catalogue-add`)
/// from `member`; returns the interaction token.
fn catalogue_command(discord: &FakeDiscord, name: &str, options: Value, resolved: Value, member: Value) -> String {
    let id = discord.next_id();
    let token = format!("token-catalogue-{id}");
    discord.dispatch("INTERACTION_CREATE", command_interaction(id, &token, name, Invocation::Slash(options), resolved, member));
    token
}

/// The edited original response whose content starts with `prefix`.
fn answer_starting<'a>(token: &'a str, prefix: &'static str) -> impl Fn(&Recorded) -> bool + 'a {
    move |r| r.method == "PATCH" && r.path.contains(token) && r.body["content"].as_str().is_some_and(|c| c.starts_with(prefix))
}

/// What the bot logs, captured as `RUST_LOG=lookalike=info` would print it.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_bot_answers_through_a_fake_discord() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_env_filter("lookalike=info").with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let world = World::new(8);
    let scratch = world.root.clone();
    let metadata_file = scratch.join("items.jsonl");
    std::fs::write(&metadata_file, "").unwrap();
    let cli_env = world.env.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let discord = FakeDiscord::start().await;
        let origin = discord.origin();
        let config = world.config(&[
            ("LOOKALIKE__DISCORD__API_PROXY", origin.as_str()),
            ("LOOKALIKE__DISCORD__GUILD_ID", "900000000000000002"),
            ("LOOKALIKE__DISCORD__USER_COOLDOWN_S", "0"),
            ("LOOKALIKE__LIMITS__MAX_IMAGE_MB", "1"),
            ("LOOKALIKE__CATALOGUE__METADATA", metadata_file.to_str().unwrap()),
        ]);
        let (start, config_for_feedback) = (config.clone(), config.clone());
        let service = Arc::new(tokio::task::spawn_blocking(move || lookalike::search::SearchService::start(&start)).await.unwrap().unwrap());
        let indexer = service.clone();
        tokio::task::spawn_blocking(move || indexer.upkeep().reindex(&mut |_| {})).await.unwrap().unwrap();
        let health = Arc::new(lookalike::ops::Health::default());
        let mut client = lookalike::discord::client(config, service.clone(), "fake-bot-token-not-secret", health).await.unwrap();
        tokio::spawn(async move { client.start().await });

        // Start-up: the gateway handshake, then the commands registered in the guild.
        let registered = discord.wait_for(WAIT, |r| r.method == "PUT" && r.path.contains("/guilds/900000000000000002/commands")).await;
        let names: Vec<&str> = registered.body.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["search", "catalogue", "catalogue-add", "catalogue-remove", "help", "reindex", "Find similar"]);
        eprintln!("scenario: READY and command registration: ok ({} identify)", discord.identified());

        // 1. /search with a photo: deferred at once, then the hits.
        let started = Instant::now();
        // A catalogue photo (the heads trained on it): it must come back first.
        let token = slash_search(&discord, "warm.png", std::fs::read(scratch.join("catalogue/warm/02.png")).unwrap(), "image/png", None, None);
        let deferred = discord.wait_for(WAIT, callback_of(&token)).await;
        assert_eq!(deferred.body["type"], 5, "deferred channel message");
        let reply = discord.wait_for(WAIT, is_reply_to(&token)).await;
        let (to_defer, to_reply) = (deferred.at - started, reply.at - started);
        assert!(embeds(&reply)[0]["title"].as_str().unwrap().starts_with("Searched: warm"), "{}", reply.body);
        let hits = hit_categories(&reply);
        assert!(!hits.is_empty() && hits.iter().all(|c| c == "warm"), "{hits:?}");
        assert_eq!(embeds(&reply)[1]["title"], "1. warm/02.png");
        assert_eq!(reply.files.len(), hits.len(), "each hit's picture is attached");
        assert_eq!(reply.body["allowed_mentions"]["parse"], json!([]), "no pings");
        assert_eq!(reply.body["components"][0]["components"][0]["custom_id"].as_str().unwrap().split(':').next(), Some("more"));
        eprintln!("scenario 1, /search with a photo: deferred after {:.0} ms, hits after {:.0} ms", to_defer.as_secs_f64() * 1e3, to_reply.as_secs_f64() * 1e3);
        // One log line per request, inside a span with its id; the user only as a hash.
        let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = log.lines().find(|l| l.contains("kind=\"slash\"") && l.contains("outcome=\"ok\"")).unwrap_or_else(|| panic!("no request line in:\n{log}"));
        assert!(line.contains("request{id=") && line.contains("categories=warm") && line.contains("hits=") && line.contains("total_ms="), "{line}");
        assert!(!line.contains(&SHOPPER.to_string()), "the user id is hashed: {line}");
        eprintln!("rendered reply (PATCH {}):\n{}", reply.path, serde_json::to_string_pretty(&reply.body).unwrap());

        // 2. Chat-style: a mention with a photo and a sentence that corrects the image vote.
        let photo_url = discord.host("chat.png", png(&picture("warm", 41)), 0);
        let message_id = discord.next_id();
        let chat = message(
            message_id,
            user(SHOPPER, "shopper", false),
            &format!("<@{BOT_USER}> the same but in blue stripes @everyone"),
            vec![attachment(discord.next_id(), "chat.png", 2000, "image/png", &photo_url)],
            vec![user(BOT_USER, "lookalike", true)],
        );
        discord.dispatch("MESSAGE_CREATE", chat);
        let answer = discord.wait_for(WAIT, |r| r.method == "POST" && r.path.ends_with("/channels/900000000000000003/messages") && !embeds(r).is_empty()).await;
        assert!(embeds(&answer)[0]["title"].as_str().unwrap().starts_with("Searched: cool"), "{}", answer.body);
        assert!(hit_categories(&answer).iter().all(|c| c == "cool"));
        assert_eq!(answer.body["message_reference"]["message_id"], message_id.to_string());
        let said = embeds(&answer)[0]["fields"].as_array().unwrap().iter().find(|f| f["name"] == "You said").unwrap()["value"].as_str().unwrap().to_string();
        assert!(said.contains("@\u{200B}everyone") && said.contains("**cool**"), "{said}");
        eprintln!("scenario 2, mention + sentence: text overrides the image vote: ok");

        // 3. A file that is not an image: a private, clear refusal, nothing downloaded.
        let token = slash_search(&discord, "notes.pdf", b"%PDF-1.7 not a photo".to_vec(), "application/pdf", None, None);
        let refusal = discord.wait_for(WAIT, callback_of(&token)).await;
        assert_eq!((refusal.body["type"].clone(), refusal.body["data"]["flags"].clone()), (json!(4), json!(64)));
        assert!(refusal.body["data"]["content"].as_str().unwrap().contains("`notes.pdf` is not an image"), "{}", refusal.body);
        assert_eq!(discord.served("notes.pdf"), None);
        eprintln!("scenario 3, non-image attachment: ephemeral refusal, no download: ok");

        // 4. Oversize: declared too large -> refused before any download; declared small but
        // really 20 MB -> the download stops at the 1 MB cap.
        let token = slash_search(&discord, "huge.png", vec![0u8; 100], "image/png", None, Some(5_000_000));
        let refusal = discord.wait_for(WAIT, callback_of(&token)).await;
        assert!(refusal.body["data"]["content"].as_str().unwrap().contains("the limit is 1 MB"), "{}", refusal.body);
        assert_eq!(discord.served("huge.png"), None, "not a byte requested");
        let mut liar = png(&picture("warm", 42));
        liar.resize(20 << 20, 0);
        let (id, attachment_id) = (discord.next_id(), discord.next_id());
        let url = discord.host("liar.png", liar, 2);
        let token = format!("token-{id}");
        let resolved = json!({ "attachments": { attachment_id.to_string(): attachment(attachment_id, "liar.png", 4000, "image/png", &url) } });
        discord.dispatch(
            "INTERACTION_CREATE",
            command_interaction(id, &token, "search", Invocation::Slash(json!([{ "name": "image", "type": 11, "value": attachment_id.to_string() }])), resolved, member(SHOPPER, 0, &[])),
        );
        let followup = discord.wait_for(WAIT, |r| r.method == "POST" && r.path.contains(&token) && !r.path.ends_with("/callback")).await;
        assert!(followup.body["content"].as_str().unwrap().contains("the limit is 1 MB") && followup.body["flags"] == 64, "{}", followup.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let served = discord.served("liar.png").unwrap();
        assert!(served < 8 << 20, "the download went on to {served} bytes");
        eprintln!("scenario 4, oversize: refused before download; a lying 20 MB file stopped after {:.1} MB served: ok", served as f64 / (1 << 20) as f64);

        // 5. /reindex by a shopper: refused, privately.
        let id = discord.next_id();
        let token = format!("token-{id}");
        discord.dispatch("INTERACTION_CREATE", command_interaction(id, &token, "reindex", Invocation::Slash(json!([])), json!({}), member(SHOPPER, 0, &[])));
        let refusal = discord.wait_for(WAIT, callback_of(&token)).await;
        assert!(refusal.body["data"]["content"].as_str().unwrap().contains("Only moderators") && refusal.body["data"]["flags"] == 64, "{}", refusal.body);
        eprintln!("scenario 5, /reindex by a non-moderator: refused: ok");

        // 6. /reindex by a moderator with 40 new images: progress edits, then the summary; a
        // search sent meanwhile is answered before the re-index ends.
        write_catalogue(&scratch.join("catalogue"), 20, 60);
        let id = discord.next_id();
        let reindex_token = format!("token-{id}");
        discord.dispatch("INTERACTION_CREATE", command_interaction(id, &reindex_token, "reindex", Invocation::Slash(json!([])), json!({}), member(SHOPPER + 1, MANAGE_GUILD, &[])));
        let progress = discord.wait_for(WAIT, |r| r.method == "PATCH" && r.path.contains(&reindex_token) && r.body["content"].as_str().is_some_and(|c| c.starts_with("Re-indexing"))).await;
        let search_token = slash_search(&discord, "during.png", png(&picture("cool", 43)), "image/png", Some("blue stripes"), None);
        let during = discord.wait_for(WAIT, is_reply_to(&search_token)).await;
        let summary = discord.wait_for(WAIT, |r| r.method == "PATCH" && r.path.contains(&reindex_token) && r.body["content"].as_str().is_some_and(|c| c.starts_with("Re-index done"))).await;
        assert!(during.at < summary.at, "the search was answered while the re-index ran");
        assert!(summary.body["content"].as_str().unwrap().contains("added 40"), "{}", summary.body);
        eprintln!("scenario 6, /reindex by a moderator: progress {:?}, search answered {:.1} s before the summary: ok", progress.body["content"], (summary.at - during.at).as_secs_f64());

        // The "More" button under the first reply: the next page.
        let more = reply.body["components"][0]["components"][0]["custom_id"].as_str().unwrap().to_string();
        let (id, token) = (discord.next_id(), format!("token-button-{}", discord.next_id()));
        discord.dispatch("INTERACTION_CREATE", button_interaction(id, &token, &more, message(discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![]), member(SHOPPER, 0, &[])));
        let page = discord.wait_for(WAIT, is_reply_to(&token)).await;
        assert!(embeds(&page)[1]["title"].as_str().unwrap().starts_with(&format!("{}.", hits.len() + 1)), "numbering continues: {}", page.body);
        let expired = button_interaction(discord.next_id(), "token-expired", "more:12345", message(discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![]), member(SHOPPER, 0, &[]));
        discord.dispatch("INTERACTION_CREATE", expired);
        let polite = discord.wait_for(WAIT, callback_of("token-expired")).await;
        assert!(polite.body["data"]["content"].as_str().unwrap().contains("expired"), "{}", polite.body);
        eprintln!("scenario, More button and an expired button: ok");

        // "Wrong category?": a private menu of the other categories; picking one searches it.
        let wrong = reply.body["components"][0]["components"][1]["custom_id"].as_str().unwrap().to_string();
        let token = format!("token-wrong-{}", discord.next_id());
        discord.dispatch(
            "INTERACTION_CREATE",
            button_interaction(discord.next_id(), &token, &wrong, message(discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![]), member(SHOPPER, 0, &[])),
        );
        let menu = discord.wait_for(WAIT, callback_of(&token)).await;
        let select = &menu.body["data"]["components"][0]["components"][0];
        assert_eq!((menu.body["data"]["flags"].clone(), select["options"][0]["value"].clone()), (json!(64), json!("cool")), "{}", menu.body);
        let token = format!("token-pick-{}", discord.next_id());
        discord.dispatch(
            "INTERACTION_CREATE",
            select_interaction(
                discord.next_id(),
                &token,
                select["custom_id"].as_str().unwrap(),
                &["cool"],
                message(discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![]),
                member(SHOPPER, 0, &[]),
            ),
        );
        let picked = discord.wait_for(WAIT, is_reply_to(&token)).await;
        assert!(hit_categories(&picked).iter().all(|c| c == "cool") && embeds(&picked)[0]["title"] == "Searched: cool", "{}", picked.body);
        eprintln!("scenario, Wrong category? -> menu -> cool: ok");

        // The pick is a correction, kept for training; a moderator's pick of the same photo
        // makes it trusted at once (one shopper alone does not).
        let feedback = lookalike::feedback::FeedbackStore::open(&config_for_feedback.feedback);
        let (corrections, _) = feedback.list().unwrap();
        let photo = std::fs::read(scratch.join("catalogue/warm/02.png")).unwrap();
        assert_eq!(corrections.len(), 1, "{corrections:?}");
        let shopper = &corrections[0];
        assert_eq!((shopper.picked.as_str(), shopper.searched.clone(), shopper.user, shopper.moderator), ("cool", vec!["warm".to_string()], SHOPPER, false));
        assert_eq!(std::fs::read(feedback.image_path(shopper)).unwrap(), photo, "the query photo is kept");
        assert!(!feedback.labels(&corrections)[0].trust.trusted(), "one shopper is not enough");
        let token = format!("token-pick-{}", discord.next_id());
        let menu_id = select["custom_id"].as_str().unwrap();
        let bot_message = message(discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![]);
        discord.dispatch("INTERACTION_CREATE", select_interaction(discord.next_id(), &token, menu_id, &["cool"], bot_message, member(SHOPPER + 1, MANAGE_GUILD, &[])));
        discord.wait_for(WAIT, is_reply_to(&token)).await;
        let (corrections, _) = feedback.list().unwrap();
        let labels = feedback.labels(&corrections);
        assert_eq!((corrections.len(), corrections[1].moderator, labels.len(), labels[0].trust.clone()), (2, true, 1, lookalike::feedback::Trust::Moderator));
        assert_eq!(corrections[1].searched, ["warm"], "what the bot decided, not the category the earlier pick searched");
        let token = format!("token-pick-{}", discord.next_id());
        let bot_message = message(discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![]);
        discord.dispatch("INTERACTION_CREATE", select_interaction(discord.next_id(), &token, menu_id, &["cool"], bot_message, member(SHOPPER + 2, 0, &[])));
        discord.wait_for(WAIT, is_reply_to(&token)).await;
        // `lookalike feedback list`, as an operator runs it: three corrections of the photo, trusted.
        let listed = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike")).args(["feedback", "list"]).envs(cli_env.iter().cloned()).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout).to_string();
        assert!(listed.contains("3 corrections of 1 photos") && listed.contains("trusted: a moderator picked it") && listed.contains("cool"), "{listed}");
        eprintln!("scenario, corrections recorded: a shopper's pick waits, a moderator's is trusted; feedback list:\n{listed}");

        catalogue_edits(&discord).await;

        // "Find similar" on a message with a photo, /catalogue and /help.
        let target_id = discord.next_id();
        // A catalogue photo: whatever the vote, it must find itself first.
        let url = discord.host("menu.png", std::fs::read(scratch.join("catalogue/cool/03.png")).unwrap(), 0);
        let target = message(target_id, user(SHOPPER, "shopper", false), "", vec![attachment(discord.next_id(), "menu.png", 2000, "image/png", &url)], vec![]);
        let token = format!("token-menu-{}", discord.next_id());
        let resolved = json!({ "messages": { target_id.to_string(): target } });
        discord.dispatch("INTERACTION_CREATE", command_interaction(discord.next_id(), &token, "Find similar", Invocation::MessageMenu(target_id), resolved, member(SHOPPER, 0, &[])));
        let similar = discord.wait_for(WAIT, is_reply_to(&token)).await;
        assert_eq!(embeds(&similar)[1]["title"], "1. cool/03.png", "{}", similar.body);
        for (command, expected, private) in [("catalogue", "items** in 2 categories", false), ("help", "/search image:", true)] {
            let token = format!("token-{command}-{}", discord.next_id());
            discord.dispatch("INTERACTION_CREATE", command_interaction(discord.next_id(), &token, command, Invocation::Slash(json!([])), json!({}), member(SHOPPER, 0, &[])));
            let answer = discord.wait_for(WAIT, callback_of(&token)).await;
            assert!(answer.body["data"]["content"].as_str().unwrap().contains(expected), "{}", answer.body);
            assert_eq!(answer.body["data"]["flags"] == 64, private, "{}", answer.body);
        }
        eprintln!("scenario, Find similar, /catalogue, /help: ok");

        // 7. The gateway drops mid-run: the client comes back and still answers.
        discord.drop_gateway();
        let deadline = Instant::now() + WAIT;
        while discord.resumed() + discord.identified() < 2 {
            assert!(Instant::now() < deadline, "the client did not reconnect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = slash_search(&discord, "after.png", std::fs::read(scratch.join("catalogue/cool/05.png")).unwrap(), "image/png", None, None);
        let after = discord.wait_for(WAIT, is_reply_to(&token)).await;
        assert_eq!(embeds(&after)[1]["title"], "1. cool/05.png", "{}", after.body);
        eprintln!("scenario 7, gateway dropped: reconnected ({} identify, {} resume) and answered: ok", discord.identified(), discord.resumed());

        assert!(discord.unrouted().is_empty(), "calls the fake does not know: {:?}", discord.unrouted());
    });
}

/// `/catalogue-add` and `/catalogue-remove`: a shopper is refused; a moderator's new item is
/// found first by a search with its photo, is offered by autocomplete, and is gone once removed;
/// `/catalogue` lists the edits.
async fn catalogue_edits(discord: &FakeDiscord) {
    let photo = png(&picture("warm", 77));
    let add_options = |attachment_id: u64| {
        json!([
            { "name": "image", "type": 11, "value": attachment_id.to_string() },
            { "name": "category", "type": 3, "value": "warm" },
            { "name": "title", "type": 3, "value": "Warm blob lamp" },
            { "name": "price", "type": 3, "value": "12.50" },
        ])
    };
    let url = discord.host("new-item.png", photo.clone(), 0);
    let attachment_id = discord.next_id();
    let resolved = json!({ "attachments": { attachment_id.to_string(): attachment(attachment_id, "new-item.png", photo.len(), "image/png", &url) } });

    let token = catalogue_command(discord, "catalogue-add", add_options(attachment_id), resolved.clone(), member(SHOPPER, 0, &[]));
    let refusal = discord.wait_for(WAIT, callback_of(&token)).await;
    assert!(refusal.body["data"]["content"].as_str().unwrap().contains("Only moderators") && refusal.body["data"]["flags"] == 64, "{}", refusal.body);
    assert_eq!(discord.served("new-item.png"), None, "a refused add downloads nothing");

    let moderator = || member(SHOPPER + 1, MANAGE_GUILD, &[]);
    let token = catalogue_command(discord, "catalogue-add", add_options(attachment_id), resolved.clone(), moderator());
    let added = discord.wait_for(WAIT, answer_starting(&token, "Added")).await;
    let content = added.body["content"].as_str().unwrap().to_string();
    assert!(content.contains("to **warm**; a search with this photo now finds it first"), "{}", added.body);
    let hit = &embeds(&added)[0];
    assert_eq!(hit["title"], "1. Warm blob lamp", "{}", added.body);
    assert!(hit["fields"].as_array().unwrap().iter().any(|f| f["name"] == "Price" && f["value"] == "12.50"), "{hit}");
    assert_eq!(added.files.len(), 1, "the item's picture is attached");
    let id = content.split("**").nth(1).unwrap().replace('\\', "");
    assert!(id.starts_with("warm/") && id.ends_with(".png"), "{id}");

    let token = slash_search(discord, "again.png", photo.clone(), "image/png", None, None);
    let found = discord.wait_for(WAIT, is_reply_to(&token)).await;
    assert_eq!(embeds(&found)[1]["title"], "1. Warm blob lamp", "a search with the photo finds the new item first: {}", found.body);
    let token = catalogue_command(discord, "catalogue-add", add_options(attachment_id), resolved, moderator());
    let twice = discord.wait_for(WAIT, answer_starting(&token, "Not added")).await;
    assert!(twice.body["content"].as_str().unwrap().contains("already in the catalogue"), "{}", twice.body);
    eprintln!("scenario, /catalogue-add: shopper refused; moderator added {id}, found first by its photo; a second add refused: ok");

    let token = format!("token-complete-{}", discord.next_id());
    let typing = json!([{ "name": "item", "type": 3, "value": "blob", "focused": true }]);
    discord.dispatch("INTERACTION_CREATE", autocomplete_interaction(discord.next_id(), &token, "catalogue-remove", typing, moderator()));
    let offered = discord.wait_for(WAIT, callback_of(&token)).await;
    assert_eq!(offered.body["type"], 8, "autocomplete result");
    assert_eq!(offered.body["data"]["choices"], json!([{ "name": format!("Warm blob lamp ({id})"), "value": id }]), "{}", offered.body);

    let remove = |item: &str| json!([{ "name": "item", "type": 3, "value": item }]);
    let token = catalogue_command(discord, "catalogue-remove", remove(&id), json!({}), member(SHOPPER, 0, &[]));
    assert!(discord.wait_for(WAIT, callback_of(&token)).await.body["data"]["content"].as_str().unwrap().contains("Only moderators"));
    let token = catalogue_command(discord, "catalogue-remove", remove(&id), json!({}), moderator());
    let removed = discord.wait_for(WAIT, answer_starting(&token, "Removed")).await;
    assert!(removed.body["content"].as_str().unwrap().contains("index generation"), "{}", removed.body);
    let token = slash_search(discord, "gone.png", photo, "image/png", None, None);
    let after = discord.wait_for(WAIT, is_reply_to(&token)).await;
    assert!(embeds(&after)[1..].iter().all(|e| e["title"] != "1. Warm blob lamp" && !e["title"].as_str().unwrap().contains(&id)), "{}", after.body);
    let token = catalogue_command(discord, "catalogue-remove", remove(&id), json!({}), moderator());
    let missing = discord.wait_for(WAIT, answer_starting(&token, "Not removed")).await;
    assert!(missing.body["content"].as_str().unwrap().contains("no catalogue item"), "{}", missing.body);

    let token = catalogue_command(discord, "catalogue", json!([]), json!({}), member(SHOPPER, 0, &[]));
    let show = discord.wait_for(WAIT, callback_of(&token)).await;
    let text = show.body["data"]["content"].as_str().unwrap();
    let edits = text.split("**Last edits**").nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(edits.contains(&format!("<@{}>: added {}", SHOPPER + 1, id)) && edits.contains("removed") && edits.contains("corrected photo"), "{text}");
    eprintln!("scenario, /catalogue-remove (autocompleted) by a moderator: no longer found; /catalogue:\n{text}");
}
