//! The bot end to end: the real serenity client, pointed through `discord.api_proxy` at a fake
//! Discord on loopback (REST, CDN and websocket gateway), with the real search service on the
//! offline kit's backbones. One bot serves every scenario in turn, as a server would: the test
//! runs the steps below one after the other against it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookalike::config::Config;
use serde_json::{json, Value};

use crate::common::fake_discord::{attachment, autocomplete_interaction, command_interaction, embeds, member, message, user, FakeDiscord, Invocation, Recorded, BOT_USER, SHOPPER};
use crate::common::scenario::Scenario;
use crate::common::shop::FakeShop;
use crate::common::{heavy, picture, png, write_catalogue, World};

const WAIT: Duration = Duration::from_secs(60);
/// Manage Server.
const MANAGE_GUILD: u64 = 1 << 5;

/// Categories of the hit embeds (every embed after the summary).
fn hit_categories(recorded: &Recorded) -> Vec<String> {
    embeds(recorded)[1..].iter().map(|e| e["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Category").unwrap()["value"].as_str().unwrap().to_string()).collect()
}

/// The edited original response whose content starts with `prefix`.
fn answer_starting<'a>(token: &'a str, prefix: &'static str) -> impl Fn(&Recorded) -> bool + 'a {
    move |r| r.method == "PATCH" && r.path.contains(token) && r.body["content"].as_str().is_some_and(|c| c.starts_with(prefix))
}

/// The `content` of an interaction callback.
fn content(callback: &Recorded) -> &str {
    callback.body["data"]["content"].as_str().unwrap()
}

/// The shopper who searches, without permissions.
fn shopper() -> Value {
    member(SHOPPER, 0, &[])
}

/// Another member, with Manage Server.
fn moderator() -> Value {
    member(SHOPPER + 1, MANAGE_GUILD, &[])
}

/// What the bot logs, captured as `RUST_LOG=lookalike=info` would print it.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_bot_answers_through_a_fake_discord() {
    let _heavy = heavy(module_path!());
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_env_filter("lookalike=info").with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let world = World::new(8);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let (s, config) = start_the_bot(&world).await;
        start_up_registers_the_commands(&s).await;
        let first = a_search_with_a_photo(&s, &world.catalogue, &logs).await;
        a_mention_with_a_sentence(&s).await;
        a_file_that_is_not_an_image(&s).await;
        oversize_files(&s).await;
        a_reindex_by_a_shopper(&s).await;
        a_reindex_by_a_moderator(&s, &world.catalogue).await;
        more_and_expired_buttons(&s, &first).await;
        let menu = wrong_category(&s, &first).await;
        corrections_are_kept(&s, &config, &menu, &world).await;
        let (item, photo) = catalogue_add(&s).await;
        catalogue_remove(&s, &item, photo).await;
        catalogue_shows_the_last_edits(&s, &item).await;
        find_similar_catalogue_and_help(&s, &world.catalogue).await;
        the_gateway_drops(&s, &world.catalogue).await;
        words_alone_a_colour_and_a_price(&s).await;
        a_feed_import(&s).await;
        assert!(s.discord.unrouted().is_empty(), "calls the fake does not know: {:?}", s.discord.unrouted());
    });
}

/// The search service on `world` (indexed, with a few items' titles, prices and words), and the serenity client
/// started against a fresh fake Discord; returns the scenario and the bot's config.
async fn start_the_bot(world: &World) -> (Scenario, Config) {
    let metadata_file = world.root.join("items.jsonl");
    std::fs::write(&metadata_file, shop_metadata(&world.catalogue)).unwrap();
    let discord = FakeDiscord::start().await;
    let origin = discord.origin();
    let config = world.config(&[
        ("LOOKALIKE__DISCORD__API_PROXY", origin.as_str()),
        ("LOOKALIKE__DISCORD__GUILD_ID", "900000000000000002"),
        ("LOOKALIKE__DISCORD__USER_COOLDOWN_S", "0"),
        ("LOOKALIKE__LIMITS__MAX_IMAGE_MB", "1"),
        ("LOOKALIKE__CATALOGUE__METADATA", metadata_file.to_str().unwrap()),
        // The fake shop of `/catalogue-import` is on loopback.
        ("LOOKALIKE__DISCORD__IMPORT_PRIVATE_HOSTS", "true"),
    ]);
    let start = config.clone();
    let service = Arc::new(tokio::task::spawn_blocking(move || lookalike::search::SearchService::start(&start)).await.unwrap().unwrap());
    let indexer = service.clone();
    tokio::task::spawn_blocking(move || indexer.upkeep().reindex(&mut |_| {})).await.unwrap().unwrap();
    let health = Arc::new(lookalike::ops::Health::default());
    let mut client = lookalike::discord::client(config.clone(), service, "fake-bot-token-not-secret", health).await.unwrap();
    tokio::spawn(async move { client.start().await });
    (Scenario::new(discord, WAIT), config)
}

/// Titles, prices and words for the items the words scenario searches, and a blue disc in the
/// warm category (the warm items are orange discs): the photos other scenarios search keep no
/// title, so their hits show their ids.
fn shop_metadata(catalogue: &Path) -> String {
    let blue_disc = image::RgbImage::from_fn(64, 64, |x, y| match (x as i32 - 32).pow(2) + (y as i32 - 32).pow(2) < 330 {
        true => image::Rgb([40, 70, 210 - ((x * 7 + y * 13) % 40) as u8]),
        false => image::Rgb([250, 240, 230]),
    });
    blue_disc.save(catalogue.join("warm/blue-disc.png")).unwrap();
    let rows = [
        json!({ "id": "warm/blue-disc.png", "title": "Cobalt disc lamp", "price": "24.00" }),
        json!({ "id": "warm/00.png", "title": "Ember disc lamp", "price": "8.00" }),
        json!({ "id": "warm/01.png", "title": "Sunset disc lamp", "price": "$9.50" }),
        json!({ "id": "warm/03.png", "title": "Glow disc lamp", "price": "31.00" }),
        json!({ "id": "warm/04.png", "title": "Coral disc lamp", "price": "12.00" }),
        json!({ "id": "cool/06.png", "title": "Harbor tote", "price": "19.00", "description": "A striped canvas bag for the beach.", "tags": ["canvas", "summer"] }),
        json!({ "id": "cool/07.png", "title": "Breton top", "price": "15.00", "description": "Cotton stripes." }),
    ];
    rows.iter().map(|row| format!("{row}\n")).collect()
}

/// Start-up: the gateway handshake, then the commands registered in the guild.
async fn start_up_registers_the_commands(s: &Scenario) {
    let registered = s.answer(|r| r.method == "PUT" && r.path.contains("/guilds/900000000000000002/commands")).await;
    let names: Vec<&str> = registered.body.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["search", "catalogue", "catalogue-add", "catalogue-remove", "catalogue-import", "help", "reindex", "Find similar"]);
    eprintln!("scenario: READY and command registration: ok ({} identify)", s.discord.identified());
}

/// Scenario 1, /search with a photo: deferred at once, then the hits; one log line for the
/// request. Returns the reply, whose buttons later steps press.
async fn a_search_with_a_photo(s: &Scenario, catalogue: &Path, logs: &Captured) -> Recorded {
    let started = Instant::now();
    // A catalogue photo (the heads trained on it): it must come back first.
    let token = s.search("warm.png", std::fs::read(catalogue.join("warm/02.png")).unwrap(), "image/png", None, None);
    let deferred = s.callback(&token).await;
    assert_eq!(deferred.body["type"], 5, "deferred channel message");
    let reply = s.reply(&token).await;
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
    reply
}

/// Scenario 2, chat-style: a mention with a photo and a sentence that corrects the image vote.
async fn a_mention_with_a_sentence(s: &Scenario) {
    let photo_url = s.discord.host("chat.png", png(&picture("warm", 41)), 0);
    let message_id = s.discord.next_id();
    let chat = message(
        message_id,
        user(SHOPPER, "shopper", false),
        &format!("<@{BOT_USER}> the same but in blue stripes @everyone"),
        vec![attachment(s.discord.next_id(), "chat.png", 2000, "image/png", &photo_url)],
        vec![user(BOT_USER, "lookalike", true)],
    );
    s.say(chat);
    let answer = s.answer(|r| r.method == "POST" && r.path.ends_with("/channels/900000000000000003/messages") && !embeds(r).is_empty()).await;
    assert!(embeds(&answer)[0]["title"].as_str().unwrap().starts_with("Searched: cool"), "{}", answer.body);
    assert!(hit_categories(&answer).iter().all(|c| c == "cool"));
    assert_eq!(answer.body["message_reference"]["message_id"], message_id.to_string());
    let said = embeds(&answer)[0]["fields"].as_array().unwrap().iter().find(|f| f["name"] == "You said").unwrap()["value"].as_str().unwrap().to_string();
    assert!(said.contains("@\u{200B}everyone") && said.contains("**cool**"), "{said}");
    eprintln!("scenario 2, mention + sentence: text overrides the image vote: ok");
}

/// Scenario 3, a file that is not an image: a private, clear refusal, nothing downloaded.
async fn a_file_that_is_not_an_image(s: &Scenario) {
    let token = s.search("notes.pdf", b"%PDF-1.7 not a photo".to_vec(), "application/pdf", None, None);
    let refusal = s.callback(&token).await;
    assert_eq!((refusal.body["type"].clone(), refusal.body["data"]["flags"].clone()), (json!(4), json!(64)));
    assert!(content(&refusal).contains("`notes.pdf` is not an image"), "{}", refusal.body);
    assert_eq!(s.discord.served("notes.pdf"), None);
    eprintln!("scenario 3, non-image attachment: ephemeral refusal, no download: ok");
}

/// Scenario 4, oversize: declared too large -> refused before any download; declared small but
/// really 20 MB -> the download stops at the 1 MB cap.
async fn oversize_files(s: &Scenario) {
    let token = s.search("huge.png", vec![0u8; 100], "image/png", None, Some(5_000_000));
    let refusal = s.callback(&token).await;
    assert!(content(&refusal).contains("the limit is 1 MB"), "{}", refusal.body);
    assert_eq!(s.discord.served("huge.png"), None, "not a byte requested");
    let mut liar = png(&picture("warm", 42));
    liar.resize(20 << 20, 0);
    let attachment_id = s.discord.next_id();
    let url = s.discord.host("liar.png", liar, 2);
    let resolved = json!({ "attachments": { attachment_id.to_string(): attachment(attachment_id, "liar.png", 4000, "image/png", &url) } });
    let options = json!([{ "name": "image", "type": 11, "value": attachment_id.to_string() }]);
    let token = s.command("token", "search", Invocation::Slash(options), resolved, shopper());
    let followup = s.answer(|r| r.method == "POST" && r.path.contains(&token) && !r.path.ends_with("/callback")).await;
    assert!(followup.body["content"].as_str().unwrap().contains("the limit is 1 MB") && followup.body["flags"] == 64, "{}", followup.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = s.discord.served("liar.png").unwrap();
    assert!(served < 8 << 20, "the download went on to {served} bytes");
    eprintln!("scenario 4, oversize: refused before download; a lying 20 MB file stopped after {:.1} MB served: ok", served as f64 / (1 << 20) as f64);
}

/// Scenario 5, /reindex by a shopper: refused, privately.
async fn a_reindex_by_a_shopper(s: &Scenario) {
    let token = s.command("token", "reindex", Invocation::Slash(json!([])), json!({}), shopper());
    let refusal = s.callback(&token).await;
    assert!(content(&refusal).contains("Only moderators") && refusal.body["data"]["flags"] == 64, "{}", refusal.body);
    eprintln!("scenario 5, /reindex by a non-moderator: refused: ok");
}

/// Scenario 6, /reindex by a moderator with 40 new images: progress edits, then the summary; a
/// search sent meanwhile is answered before the re-index ends.
async fn a_reindex_by_a_moderator(s: &Scenario, catalogue: &Path) {
    write_catalogue(catalogue, 20, 60);
    let reindex_token = s.command("token", "reindex", Invocation::Slash(json!([])), json!({}), moderator());
    let progress = s.answer(answer_starting(&reindex_token, "Re-indexing")).await;
    let search_token = s.search("during.png", png(&picture("cool", 43)), "image/png", Some("blue stripes"), None);
    let during = s.reply(&search_token).await;
    let summary = s.answer(answer_starting(&reindex_token, "Re-index done")).await;
    assert!(during.at < summary.at, "the search was answered while the re-index ran");
    assert!(summary.body["content"].as_str().unwrap().contains("added 40"), "{}", summary.body);
    eprintln!("scenario 6, /reindex by a moderator: progress {:?}, search answered {:.1} s before the summary: ok", progress.body["content"], (summary.at - during.at).as_secs_f64());
}

/// The "More" button under the first reply: the next page; an expired button: told so.
async fn more_and_expired_buttons(s: &Scenario, first: &Recorded) {
    let more = first.body["components"][0]["components"][0]["custom_id"].as_str().unwrap().to_string();
    let token = s.token("token-button");
    s.press(&token, &more, shopper());
    let page = s.reply(&token).await;
    let hits = hit_categories(first).len();
    assert!(embeds(&page)[1]["title"].as_str().unwrap().starts_with(&format!("{}.", hits + 1)), "numbering continues: {}", page.body);
    s.press("token-expired", "more:12345", shopper());
    let polite = s.callback("token-expired").await;
    assert!(content(&polite).contains("expired"), "{}", polite.body);
    eprintln!("scenario, More button and an expired button: ok");
}

/// "Wrong category?" under the first reply: a private menu of the other categories; picking
/// one searches it. Returns the menu's custom id.
async fn wrong_category(s: &Scenario, first: &Recorded) -> String {
    let wrong = first.body["components"][0]["components"][1]["custom_id"].as_str().unwrap().to_string();
    let token = s.token("token-wrong");
    s.press(&token, &wrong, shopper());
    let menu = s.callback(&token).await;
    let select = &menu.body["data"]["components"][0]["components"][0];
    assert_eq!((menu.body["data"]["flags"].clone(), select["options"][0]["value"].clone()), (json!(64), json!("cool")), "{}", menu.body);
    let menu_id = select["custom_id"].as_str().unwrap().to_string();
    let token = s.token("token-pick");
    s.pick(&token, &menu_id, &["cool"], shopper());
    let picked = s.reply(&token).await;
    assert!(hit_categories(&picked).iter().all(|c| c == "cool") && embeds(&picked)[0]["title"] == "Searched: cool", "{}", picked.body);
    eprintln!("scenario, Wrong category? -> menu -> cool: ok");
    menu_id
}

/// The pick is a correction, kept for training; a moderator's pick of the same photo (in the
/// menu `menu_id`) makes it trusted at once (one shopper alone does not).
async fn corrections_are_kept(s: &Scenario, config: &Config, menu_id: &str, world: &World) {
    let feedback = lookalike::feedback::FeedbackStore::open(&config.feedback);
    let (corrections, _) = feedback.list().unwrap();
    let photo = std::fs::read(world.catalogue.join("warm/02.png")).unwrap();
    assert_eq!(corrections.len(), 1, "{corrections:?}");
    let shopper_pick = &corrections[0];
    assert_eq!((shopper_pick.picked.as_str(), shopper_pick.searched.clone(), shopper_pick.user, shopper_pick.moderator), ("cool", vec!["warm".to_string()], SHOPPER, false));
    assert_eq!(std::fs::read(feedback.image_path(shopper_pick)).unwrap(), photo, "the query photo is kept");
    assert!(!feedback.labels(&corrections)[0].trust.trusted(), "one shopper is not enough");
    let token = s.token("token-pick");
    s.pick(&token, menu_id, &["cool"], moderator());
    s.reply(&token).await;
    let (corrections, _) = feedback.list().unwrap();
    let labels = feedback.labels(&corrections);
    assert_eq!((corrections.len(), corrections[1].moderator, labels.len(), labels[0].trust.clone()), (2, true, 1, lookalike::feedback::Trust::Moderator));
    assert_eq!(corrections[1].searched, ["warm"], "what the bot decided, not the category the earlier pick searched");
    let token = s.token("token-pick");
    s.pick(&token, menu_id, &["cool"], member(SHOPPER + 2, 0, &[]));
    s.reply(&token).await;
    // `lookalike feedback list`, as an operator runs it: three corrections of the photo, trusted.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike")).args(["feedback", "list"]).envs(world.env.iter().cloned()).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("3 corrections of 1 photos") && listed.contains("trusted: a moderator picked it") && listed.contains("cool"), "{listed}");
    eprintln!("scenario, corrections recorded: a shopper's pick waits, a moderator's is trusted; feedback list:\n{listed}");
}

/// `/catalogue-add`: a shopper is refused; a moderator's new item is found first by a search
/// with its photo; adding it again is refused. Returns the item's id and its photo.
async fn catalogue_add(s: &Scenario) -> (String, Vec<u8>) {
    let photo = png(&picture("warm", 77));
    let url = s.discord.host("new-item.png", photo.clone(), 0);
    let attachment_id = s.discord.next_id();
    let resolved = json!({ "attachments": { attachment_id.to_string(): attachment(attachment_id, "new-item.png", photo.len(), "image/png", &url) } });
    let add = |member: Value| {
        let options = json!([
            { "name": "image", "type": 11, "value": attachment_id.to_string() },
            { "name": "category", "type": 3, "value": "warm" },
            { "name": "title", "type": 3, "value": "Warm blob lamp" },
            { "name": "price", "type": 3, "value": "12.50" },
        ]);
        s.command("token-catalogue", "catalogue-add", Invocation::Slash(options), resolved.clone(), member)
    };

    let refusal = s.callback(&add(shopper())).await;
    assert!(content(&refusal).contains("Only moderators") && refusal.body["data"]["flags"] == 64, "{}", refusal.body);
    assert_eq!(s.discord.served("new-item.png"), None, "a refused add downloads nothing");

    let added = s.answer(answer_starting(&add(moderator()), "Added")).await;
    let text = added.body["content"].as_str().unwrap().to_string();
    assert!(text.contains("to **warm**; a search with this photo now finds it first"), "{}", added.body);
    let hit = &embeds(&added)[0];
    assert_eq!(hit["title"], "1. Warm blob lamp", "{}", added.body);
    assert!(hit["fields"].as_array().unwrap().iter().any(|f| f["name"] == "Price" && f["value"] == "12.50"), "{hit}");
    assert_eq!(added.files.len(), 1, "the item's picture is attached");
    let id = text.split("**").nth(1).unwrap().replace('\\', "");
    assert!(id.starts_with("warm/") && id.ends_with(".png"), "{id}");

    let found = s.reply(&s.search("again.png", photo.clone(), "image/png", None, None)).await;
    assert_eq!(embeds(&found)[1]["title"], "1. Warm blob lamp", "a search with the photo finds the new item first: {}", found.body);
    let twice = s.answer(answer_starting(&add(moderator()), "Not added")).await;
    assert!(twice.body["content"].as_str().unwrap().contains("already in the catalogue"), "{}", twice.body);
    eprintln!("scenario, /catalogue-add: shopper refused; moderator added {id}, found first by its photo; a second add refused: ok");
    (id, photo)
}

/// `/catalogue-remove` of the item `id` added with `photo`: offered by autocomplete; a shopper
/// is refused; once a moderator removed it, a search with its photo no longer finds it, and a
/// second removal says there is no such item.
async fn catalogue_remove(s: &Scenario, id: &str, photo: Vec<u8>) {
    let token = s.token("token-complete");
    let typing = json!([{ "name": "item", "type": 3, "value": "blob", "focused": true }]);
    s.interact(autocomplete_interaction(s.discord.next_id(), &token, "catalogue-remove", typing, moderator()));
    let offered = s.callback(&token).await;
    assert_eq!(offered.body["type"], 8, "autocomplete result");
    assert_eq!(offered.body["data"]["choices"], json!([{ "name": format!("Warm blob lamp ({id})"), "value": id }]), "{}", offered.body);

    let remove = |member: Value| s.command("token-catalogue", "catalogue-remove", Invocation::Slash(json!([{ "name": "item", "type": 3, "value": id }])), json!({}), member);
    assert!(content(&s.callback(&remove(shopper())).await).contains("Only moderators"));
    let removed = s.answer(answer_starting(&remove(moderator()), "Removed")).await;
    assert!(removed.body["content"].as_str().unwrap().contains("index generation"), "{}", removed.body);
    let after = s.reply(&s.search("gone.png", photo, "image/png", None, None)).await;
    assert!(embeds(&after)[1..].iter().all(|e| e["title"] != "1. Warm blob lamp" && !e["title"].as_str().unwrap().contains(id)), "{}", after.body);
    let missing = s.answer(answer_starting(&remove(moderator()), "Not removed")).await;
    assert!(missing.body["content"].as_str().unwrap().contains("no catalogue item"), "{}", missing.body);
}

/// `/catalogue` lists the last edits: the item `id` added by the moderator, a removal, and the
/// corrected photo.
async fn catalogue_shows_the_last_edits(s: &Scenario, id: &str) {
    let show = s.callback(&s.command("token-catalogue", "catalogue", Invocation::Slash(json!([])), json!({}), shopper())).await;
    let text = content(&show);
    let edits = text.split("**Last edits**").nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(edits.contains(&format!("<@{}>: added {}", SHOPPER + 1, id)) && edits.contains("removed") && edits.contains("corrected photo"), "{text}");
    eprintln!("scenario, /catalogue-remove (autocompleted) by a moderator: no longer found; /catalogue:\n{text}");
}

/// "Find similar" on a message with a photo, /catalogue and /help.
async fn find_similar_catalogue_and_help(s: &Scenario, catalogue: &Path) {
    let target_id = s.discord.next_id();
    // A catalogue photo: whatever the vote, it must find itself first.
    let url = s.discord.host("menu.png", std::fs::read(catalogue.join("cool/03.png")).unwrap(), 0);
    let target = message(target_id, user(SHOPPER, "shopper", false), "", vec![attachment(s.discord.next_id(), "menu.png", 2000, "image/png", &url)], vec![]);
    let resolved = json!({ "messages": { target_id.to_string(): target } });
    let similar = s.reply(&s.command("token-menu", "Find similar", Invocation::MessageMenu(target_id), resolved, shopper())).await;
    assert_eq!(embeds(&similar)[1]["title"], "1. cool/03.png", "{}", similar.body);
    for (command, expected, private) in [("catalogue", "items** in 2 categories", false), ("help", "/search image:", true)] {
        let answer = s.callback(&s.command(&format!("token-{command}"), command, Invocation::Slash(json!([])), json!({}), shopper())).await;
        assert!(content(&answer).contains(expected), "{}", answer.body);
        assert_eq!(answer.body["data"]["flags"] == 64, private, "{}", answer.body);
    }
    eprintln!("scenario, Find similar, /catalogue, /help: ok");
}

/// Scenario 7, the gateway drops mid-run: the client comes back and still answers.
async fn the_gateway_drops(s: &Scenario, catalogue: &Path) {
    s.discord.drop_gateway();
    s.until("the client did not reconnect", || s.discord.resumed() + s.discord.identified() >= 2).await;
    let token = s.search("after.png", std::fs::read(catalogue.join("cool/05.png")).unwrap(), "image/png", None, None);
    let after = s.reply(&token).await;
    assert_eq!(embeds(&after)[1]["title"], "1. cool/05.png", "{}", after.body);
    eprintln!("scenario 7, gateway dropped: reconnected ({} identify, {} resume) and answered: ok", s.discord.identified(), s.discord.resumed());
}

/// The shopper's words: a search by words alone (no photo, no backbone), a refusal when there
/// is neither, "like this but in blue" on an orange disc, and a price. Each answer says what the
/// words did.
async fn words_alone_a_colour_and_a_price(s: &Scenario) {
    let words_only = |text: &str| {
        let (id, token) = (s.discord.next_id(), s.token("token-words"));
        let options = json!([{ "name": "text", "type": 3, "value": text }]);
        s.interact(command_interaction(id, &token, "search", Invocation::Slash(options), json!({}), shopper()));
        token
    };
    let token = words_only("a canvas tote for the beach");
    let reply = s.reply(&token).await;
    let summary = &embeds(&reply)[0];
    assert_eq!(embeds(&reply)[1]["title"], "1. Harbor tote", "{}", reply.body);
    let fields = summary["fields"].as_array().unwrap();
    assert!(fields.iter().all(|f| f["name"] != "Image vote"), "no photo, no vote: {summary}");
    let did = fields.iter().find(|f| f["name"] == "What your words did").unwrap()["value"].as_str().unwrap();
    assert!(did.contains("no photo: the items' titles, descriptions and tags searched"), "{did}");
    assert!(summary["footer"]["text"].as_str().unwrap().contains("vision 0 ms"), "no backbone ran: {summary}");
    eprintln!("scenario, words alone (\"a canvas tote for the beach\"):\n{}", serde_json::to_string_pretty(&embeds(&reply)[..2]).unwrap());

    let nothing = s.callback(&words_only("   ")).await;
    assert!(nothing.body["data"]["content"].as_str().unwrap().contains("I need a photo or some words"), "{}", nothing.body);
    assert_eq!(nothing.body["data"]["flags"], 64, "private");

    let token = s.search("orange.png", png(&picture("warm", 43)), "image/png", Some("like this but in blue"), None);
    let reply = s.reply(&token).await;
    assert_eq!(embeds(&reply)[1]["title"], "1. Cobalt disc lamp", "the blue disc first: {}", reply.body);
    let did = embeds(&reply)[0]["fields"].as_array().unwrap().iter().find(|f| f["name"] == "What your words did").unwrap()["value"].as_str().unwrap().to_string();
    assert!(did.contains("colour 'blue'") && did.contains("dyed 'blue'"), "{did}");
    eprintln!("scenario, colour change (orange disc, \"like this but in blue\"): {did}");

    let token = s.search("orange.png", png(&picture("warm", 44)), "image/png", Some("like this, under $10"), None);
    let reply = s.reply(&token).await;
    let mut prices: Vec<String> = embeds(&reply)[1..].iter().map(|e| e["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Price").unwrap()["value"].as_str().unwrap().to_string()).collect();
    prices.sort();
    assert_eq!(prices, ["$9.50", "8.00"], "only the two items under 10, a full page of what qualifies: {}", reply.body);
    let did = embeds(&reply)[0]["fields"].as_array().unwrap().iter().find(|f| f["name"] == "What your words did").unwrap()["value"].as_str().unwrap().to_string();
    assert!(did.contains("price under 10: 2 of"), "{did}");
    eprintln!("scenario, price (\"like this, under $10\"): {did}; prices {prices:?}");
}

/// `/catalogue-import`: a shopper is refused, and so is a moderator's path that is no web
/// address; a moderator's import of the shop's Merchant TSV feed edits its progress into the
/// reply, then the summary with each skip's reason; a search by words then shows a product
/// once, its other colours under "Also in".
async fn a_feed_import(s: &Scenario) {
    let shop = FakeShop::start();
    let url = shop.url("/feeds/shop.tsv");
    let options = |url: &str| json!([{ "name": "url", "type": 3, "value": url }, { "name": "category-level", "type": 4, "value": 2 }]);
    let import = |url: &str, member: Value| s.command("token-import", "catalogue-import", Invocation::Slash(options(url)), json!({}), member);
    assert!(content(&s.callback(&import(&url, shopper())).await).contains("Only moderators"));
    assert!(content(&s.callback(&import("/etc/passwd", moderator())).await).contains("the feed's web address"));
    assert_eq!(shop.requests("/"), 0, "refused imports fetch nothing");

    let token = import(&url, moderator());
    let progress = s.answer(answer_starting(&token, "Importing the feed")).await;
    let done = s.answer(answer_starting(&token, "Feed imported.")).await;
    let text = done.body["content"].as_str().unwrap();
    assert!(text.contains("merchant-tsv feed: 46 products, 46 pictures kept: 46 added") && text.contains("skipped 4 products"), "{text}");
    // Its warm pictures have the same pixels as ones the catalogue holds (README of the feeds):
    // those are stored once, so fewer than 46 are embedded.
    assert!(text.contains("ME-3032: HTTP 404") && text.contains("the current heads know every category") && text.contains("added 46, changed 0"), "{text}");

    let (id, token) = (s.discord.next_id(), s.token("token-words"));
    s.interact(command_interaction(id, &token, "search", Invocation::Slash(json!([{ "name": "text", "type": 3, "value": "velvet cushion" }])), json!({}), shopper()));
    let reply = s.reply(&token).await;
    let hits = embeds(&reply);
    let velvet: Vec<&Value> = hits[1..].iter().filter(|e| e["title"].as_str().unwrap().contains("Velvet cushion")).collect();
    assert_eq!(velvet.len(), 1, "one product, shown once: {}", reply.body);
    let also = velvet[0]["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Also in").map(|f| f["value"].as_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(also.split(", ").count(), 2, "its two other colours: {also:?}");
    eprintln!("scenario, /catalogue-import: progress {:?}; summary:\n{text}\nvelvet cushion: also in {also}", progress.body["content"]);
}
