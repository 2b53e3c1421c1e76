//! A fake Discord on loopback for the bot's integration tests: the REST routes serenity calls
//! (gateway URL, command registration, interaction callbacks, original-response edits,
//! follow-ups, channel messages), a CDN route serving attachment bytes (counting what it
//! served), and a websocket gateway speaking Hello, Identify/Resume, READY, heartbeat ACK and
//! then the events a test dispatches. Payloads follow Discord's documented shapes, with every
//! field real Discord sends (serenity drops events that lack one).
// Shared by the tests in tests/it and tests/ops.rs, each using some of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

pub const APPLICATION: u64 = 900_000_000_000_000_001;
pub const BOT_USER: u64 = 900_000_000_000_000_001;
pub const GUILD: u64 = 900_000_000_000_000_002;
pub const CHANNEL: u64 = 900_000_000_000_000_003;

/// One REST call the bot made.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The JSON body, or the `payload_json` part of a multipart body.
    pub body: Value,
    /// File names of multipart attachments.
    pub files: Vec<String>,
    pub at: Instant,
}

enum Gateway {
    Dispatch(String, Value),
    Drop,
}

#[derive(Default)]
struct Shared {
    ws_url: String,
    origin: String,
    requests: Mutex<Vec<Recorded>>,
    unrouted: Mutex<Vec<String>>,
    gateway: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Gateway>>>,
    cdn: Mutex<HashMap<String, (Vec<u8>, usize)>>,
    /// Added before every CDN chunk (a slow network).
    cdn_delay_ms: AtomicUsize,
    served: Mutex<HashMap<String, usize>>,
    identified: AtomicUsize,
    /// The `shard` of each Identify, in order.
    shards_identified: Mutex<Vec<[u64; 2]>>,
    /// What `/gateway/bot` recommends.
    shards: u64,
    resumed: AtomicUsize,
    ids: AtomicU64,
}

pub struct FakeDiscord {
    shared: Arc<Shared>,
}

impl FakeDiscord {
    /// Binds the REST server and the gateway on `127.0.0.1:0` and serves them on this runtime.
    pub async fn start() -> FakeDiscord {
        FakeDiscord::start_with_shards(1).await
    }

    /// [`start`](Self::start), with `/gateway/bot` recommending `shards` shards.
    pub async fn start_with_shards(shards: u64) -> FakeDiscord {
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared {
            ws_url: format!("ws://{}", gateway.local_addr().unwrap()),
            origin: format!("http://{}", rest.local_addr().unwrap()),
            ids: AtomicU64::new(910_000_000_000_000_000),
            shards,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/api/v10/gateway", get(|State(s): State<Arc<Shared>>| async move { Json(json!({ "url": s.ws_url })) }))
            .route(
                "/api/v10/gateway/bot",
                get(|State(s): State<Arc<Shared>>| async move {
                    Json(json!({ "url": s.ws_url, "shards": s.shards, "session_start_limit": { "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1 } }))
                }),
            )
            .route("/api/v10/applications/:app/commands", put(register))
            .route("/api/v10/applications/:app/guilds/:guild/commands", put(register))
            .route(
                "/api/v10/interactions/:id/:token/callback",
                post(|State(s): State<Arc<Shared>>, request: Request| async move {
                    record(&s, request).await;
                    StatusCode::NO_CONTENT.into_response()
                }),
            )
            .route("/api/v10/webhooks/:app/:token/messages/@original", axum::routing::any(original))
            .route("/api/v10/webhooks/:app/:token", post(message_back))
            .route("/api/v10/channels/:channel/messages", post(message_back))
            .route("/cdn/:name", get(cdn))
            .fallback(|State(s): State<Arc<Shared>>, request: Request| async move {
                let recorded = record(&s, request).await;
                s.unrouted.lock().unwrap().push(format!("{} {}", recorded.method, recorded.path));
                StatusCode::NOT_FOUND
            })
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(rest, app).await.unwrap() });
        let state = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = gateway.accept().await {
                tokio::spawn(connection(state.clone(), stream));
            }
        });
        FakeDiscord { shared }
    }

    /// The origin the bot's `discord.api_proxy` points at.
    pub fn origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// Serves `bytes` at `/cdn/NAME`; `chunk_delay` spaces 64 KB chunks (to watch a download stop).
    pub fn host(&self, name: &str, bytes: Vec<u8>, chunk_delay_ms: usize) -> String {
        self.shared.cdn.lock().unwrap().insert(name.to_string(), (bytes, chunk_delay_ms));
        format!("{}/cdn/{name}", self.shared.origin)
    }

    /// Makes the CDN this much slower per 64 KB chunk from now on.
    pub fn slow_cdn(&self, delay_ms: usize) {
        self.shared.cdn_delay_ms.store(delay_ms, Ordering::Relaxed);
    }

    /// Bytes the CDN managed to send of `name` (None: never asked for).
    pub fn served(&self, name: &str) -> Option<usize> {
        self.shared.served.lock().unwrap().get(name).copied()
    }

    pub fn next_id(&self) -> u64 {
        self.shared.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn identified(&self) -> usize {
        self.shared.identified.load(Ordering::Relaxed)
    }

    /// The `[shard, total]` of each Identify received, in order.
    pub fn shards_identified(&self) -> Vec<[u64; 2]> {
        self.shared.shards_identified.lock().unwrap().clone()
    }

    pub fn resumed(&self) -> usize {
        self.shared.resumed.load(Ordering::Relaxed)
    }

    /// Sends a dispatch event over the current gateway connection.
    pub fn dispatch(&self, event: &str, data: Value) {
        let gateway = self.shared.gateway.lock().unwrap();
        gateway.as_ref().expect("a gateway connection").send(Gateway::Dispatch(event.to_string(), data)).expect("the connection is open");
    }

    /// Drops the gateway connection without a close frame, as a network failure would.
    pub fn drop_gateway(&self) {
        if let Some(connection) = self.shared.gateway.lock().unwrap().take() {
            let _ = connection.send(Gateway::Drop);
        }
    }

    /// Calls that matched no route of the fake (a test failing on them keeps the fake honest).
    pub fn unrouted(&self) -> Vec<String> {
        self.shared.unrouted.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) for a REST call matching `wanted`.
    pub async fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| wanted(r)) {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out; the fake Discord received:\n{:#?}", self.requests().iter().map(|r| format!("{} {} {}", r.method, r.path, r.body)).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn record(shared: &Shared, request: Request) -> Recorded {
    let (method, path) = (request.method().to_string(), request.uri().path().to_string());
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let bytes = axum::body::to_bytes(request.into_body(), 64 << 20).await.unwrap_or_default();
    let (body, files) =
        if let Some(boundary) = content_type.split("boundary=").nth(1) { multipart(&bytes, boundary.trim_matches('"')) } else { (serde_json::from_slice(&bytes).unwrap_or(Value::Null), Vec::new()) };
    let recorded = Recorded { method, path, body, files, at: Instant::now() };
    shared.requests.lock().unwrap().push(recorded.clone());
    recorded
}

/// The `payload_json` part and the file names of a multipart/form-data body.
fn multipart(bytes: &Bytes, boundary: &str) -> (Value, Vec<String>) {
    let text = String::from_utf8_lossy(bytes);
    let (mut payload, mut files) = (Value::Null, Vec::new());
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, body)) = part.split_once("\r\n\r\n") else { continue };
        if head.contains("name=\"payload_json\"") {
            payload = serde_json::from_str(body.trim_end_matches("\r\n")).unwrap_or(Value::Null);
        } else if let Some(name) = head.split("filename=\"").nth(1).and_then(|rest| rest.split('"').next()) {
            files.push(name.to_string());
        }
    }
    (payload, files)
}

async fn register(State(shared): State<Arc<Shared>>, Path(params): Path<HashMap<String, String>>, request: Request) -> Json<Value> {
    let recorded = record(&shared, request).await;
    let commands: Vec<Value> = recorded
        .body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut command| {
            let object = command.as_object_mut().unwrap();
            object.insert("id".into(), json!(shared.ids.fetch_add(1, Ordering::Relaxed).to_string()));
            object.insert("application_id".into(), json!(APPLICATION.to_string()));
            object.insert("version".into(), json!("1"));
            object.entry("type").or_insert(json!(1));
            object.entry("description").or_insert(json!(""));
            object.entry("default_member_permissions").or_insert(Value::Null);
            if let Some(guild) = params.get("guild") {
                object.insert("guild_id".into(), json!(guild));
            }
            command
        })
        .collect();
    Json(Value::Array(commands))
}

async fn original(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let recorded = record(&shared, request).await;
    if method == Method::DELETE {
        return StatusCode::NO_CONTENT.into_response();
    }
    Json(message_json(&shared, &recorded.body)).into_response()
}

async fn message_back(State(shared): State<Arc<Shared>>, request: Request) -> Json<Value> {
    let recorded = record(&shared, request).await;
    Json(message_json(&shared, &recorded.body))
}

/// The message Discord returns for a message the bot sent.
fn message_json(shared: &Shared, sent: &Value) -> Value {
    let mut message = message(shared.ids.fetch_add(1, Ordering::Relaxed), user(BOT_USER, "lookalike", true), sent["content"].as_str().unwrap_or(""), Vec::new(), Vec::new());
    message["embeds"] = sent["embeds"].clone();
    if message["embeds"].is_null() {
        message["embeds"] = json!([]);
    }
    message["application_id"] = json!(APPLICATION.to_string());
    message
}

async fn cdn(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let Some((bytes, delay_ms)) = shared.cdn.lock().unwrap().get(&name).cloned() else { return StatusCode::NOT_FOUND.into_response() };
    let delay_ms = delay_ms + shared.cdn_delay_ms.load(Ordering::Relaxed);
    shared.served.lock().unwrap().insert(name.clone(), 0);
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let stream = futures_util::stream::iter(chunks).then(move |chunk| {
        let (shared, name) = (shared.clone(), name.clone());
        async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms as u64)).await;
            }
            *shared.served.lock().unwrap().get_mut(&name).unwrap() += chunk.len();
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        }
    });
    // No length header: the bot must stop on the bytes themselves.
    Response::builder().header(header::CONTENT_TYPE, "image/png").body(Body::from_stream(stream)).unwrap()
}

async fn connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
    let (commands, mut inbox) = tokio::sync::mpsc::unbounded_channel();
    *shared.gateway.lock().unwrap() = Some(commands);
    let mut sequence = 0u64;
    let _ = socket.send(Frame::text(json!({ "op": 10, "d": { "heartbeat_interval": 41250 } }).to_string())).await;
    loop {
        tokio::select! {
            frame = socket.next() => {
                let Some(Ok(frame)) = frame else { break };
                let Ok(text) = frame.to_text() else { continue };
                let Ok(payload) = serde_json::from_str::<Value>(text) else { continue };
                match payload["op"].as_u64() {
                    Some(1) => { let _ = socket.send(Frame::text(json!({ "op": 11 }).to_string())).await; }
                    Some(2) => {
                        shared.identified.fetch_add(1, Ordering::Relaxed);
                        let shard = [payload["d"]["shard"][0].as_u64().unwrap_or(0), payload["d"]["shard"][1].as_u64().unwrap_or(1)];
                        shared.shards_identified.lock().unwrap().push(shard);
                        sequence += 1;
                        let ready = json!({
                            "v": 10,
                            "user": user(BOT_USER, "lookalike", true),
                            "guilds": [{ "id": GUILD.to_string(), "unavailable": true }],
                            "session_id": "fake-session",
                            "resume_gateway_url": shared.ws_url,
                            "shard": shard,
                            "application": { "id": APPLICATION.to_string(), "flags": 0 },
                        });
                        let _ = socket.send(Frame::text(json!({ "op": 0, "t": "READY", "s": sequence, "d": ready }).to_string())).await;
                    }
                    Some(6) => {
                        shared.resumed.fetch_add(1, Ordering::Relaxed);
                        sequence = payload["d"]["seq"].as_u64().unwrap_or(sequence) + 1;
                        let _ = socket.send(Frame::text(json!({ "op": 0, "t": "RESUMED", "s": sequence, "d": {} }).to_string())).await;
                    }
                    _ => {}
                }
            }
            command = inbox.recv() => match command {
                Some(Gateway::Dispatch(event, data)) => {
                    sequence += 1;
                    let _ = socket.send(Frame::text(json!({ "op": 0, "t": event, "s": sequence, "d": data }).to_string())).await;
                }
                Some(Gateway::Drop) | None => break,
            }
        }
    }
    // Dropping the socket closes the TCP connection without a close frame.
}

// Discord's documented object shapes.

pub fn user(id: u64, name: &str, bot: bool) -> Value {
    json!({ "id": id.to_string(), "username": name, "discriminator": "0", "global_name": name, "avatar": null, "bot": bot, "public_flags": 0, "flags": 0, "banner": null, "accent_color": null, "avatar_decoration_data": null })
}

pub fn attachment(id: u64, name: &str, size: usize, content_type: &str, url: &str) -> Value {
    json!({ "id": id.to_string(), "filename": name, "size": size, "url": url, "proxy_url": url, "content_type": content_type, "width": 64, "height": 64, "ephemeral": false })
}

/// A guild member as interactions carry it, with the permissions in the channel.
pub fn member(user_id: u64, permissions: u64, roles: &[u64]) -> Value {
    json!({
        "user": user(user_id, "shopper", false), "nick": null, "avatar": null, "banner": null,
        "roles": roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(), "joined_at": "2026-01-01T00:00:00.000000+00:00",
        "premium_since": null, "deaf": false, "mute": false, "flags": 0, "pending": false,
        "permissions": permissions.to_string(), "communication_disabled_until": null,
    })
}

pub fn message(id: u64, author: Value, content: &str, attachments: Vec<Value>, mentions: Vec<Value>) -> Value {
    json!({
        "id": id.to_string(), "channel_id": CHANNEL.to_string(), "guild_id": GUILD.to_string(), "author": author,
        "content": content, "timestamp": "2026-11-27T07:00:00.000000+00:00", "edited_timestamp": null, "tts": false,
        "mention_everyone": false, "mentions": mentions, "mention_roles": [], "attachments": attachments, "embeds": [],
        "pinned": false, "type": 0, "flags": 0, "components": [], "webhook_id": null,
    })
}

/// How an application command was invoked.
pub enum Invocation {
    /// A slash command with its options.
    Slash(Value),
    /// A message menu entry on the message with this id.
    MessageMenu(u64),
}

/// An INTERACTION_CREATE for an application command.
pub fn command_interaction(id: u64, token: &str, name: &str, invocation: Invocation, resolved: Value, member: Value) -> Value {
    let data = match invocation {
        // Discord leaves `options` out when none were given.
        Invocation::Slash(options) if options == json!([]) => json!({ "id": "910000000000000999", "name": name, "type": 1, "resolved": resolved }),
        Invocation::Slash(options) => json!({ "id": "910000000000000999", "name": name, "type": 1, "resolved": resolved, "options": options }),
        // Message commands carry a target and no options.
        Invocation::MessageMenu(target) => json!({ "id": "910000000000000999", "name": name, "type": 3, "resolved": resolved, "target_id": target.to_string() }),
    };
    interaction(id, token, 2, data, member)
}

/// An INTERACTION_CREATE asking for autocomplete choices while a user types: `options` as
/// Discord sends them, the option being typed marked `"focused": true`.
pub fn autocomplete_interaction(id: u64, token: &str, name: &str, options: Value, member: Value) -> Value {
    interaction(id, token, 4, json!({ "id": "910000000000000999", "name": name, "type": 1, "options": options }), member)
}

fn interaction(id: u64, token: &str, kind: u8, data: Value, member: Value) -> Value {
    json!({
        "id": id.to_string(), "application_id": APPLICATION.to_string(), "type": kind, "data": data,
        "guild_id": GUILD.to_string(), "channel": { "id": CHANNEL.to_string(), "name": "shop", "type": 0, "permissions": "2147483647" },
        "channel_id": CHANNEL.to_string(), "member": member, "token": token, "version": 1,
        "app_permissions": "2147483647", "locale": "en-GB", "guild_locale": "en-GB", "entitlements": [],
        "authorizing_integration_owners": { "0": GUILD.to_string() }, "context": 0, "attachment_size_limit": 26214400,
    })
}

/// An INTERACTION_CREATE for a button press on `message`.
pub fn button_interaction(id: u64, token: &str, custom_id: &str, message: Value, member: Value) -> Value {
    let mut event = interaction(id, token, 3, json!({ "custom_id": custom_id, "component_type": 2 }), member);
    event["message"] = message;
    event
}

/// An INTERACTION_CREATE for a choice in a string select menu on `message`.
pub fn select_interaction(id: u64, token: &str, custom_id: &str, values: &[&str], message: Value, member: Value) -> Value {
    let mut event = interaction(id, token, 3, json!({ "custom_id": custom_id, "component_type": 3, "values": values }), member);
    event["message"] = message;
    event
}

// What the bot's tests send and look for.

/// The shopper who searches in the tests.
pub const SHOPPER: u64 = 910_000_000_000_000_777;

pub fn embeds(recorded: &Recorded) -> Vec<Value> {
    recorded.body["embeds"].as_array().cloned().unwrap_or_default()
}

/// A `/search` with a photo hosted on the fake CDN; returns the interaction token.
pub fn slash_search(discord: &FakeDiscord, name: &str, bytes: Vec<u8>, content_type: &str, text: Option<&str>, declared_size: Option<usize>) -> String {
    let (id, attachment_id) = (discord.next_id(), discord.next_id());
    let size = declared_size.unwrap_or(bytes.len());
    let url = discord.host(name, bytes, 0);
    let token = format!("token-{id}");
    let mut options = vec![json!({ "name": "image", "type": 11, "value": attachment_id.to_string() })];
    if let Some(text) = text {
        options.push(json!({ "name": "text", "type": 3, "value": text }));
    }
    let resolved = json!({ "attachments": { attachment_id.to_string(): attachment(attachment_id, name, size, content_type, &url) } });
    discord.dispatch("INTERACTION_CREATE", command_interaction(id, &token, "search", Invocation::Slash(json!(options)), resolved, member(SHOPPER, 0, &[])));
    token
}

pub fn is_reply_to(token: &str) -> impl Fn(&Recorded) -> bool + '_ {
    move |r| r.method == "PATCH" && r.path.contains(token) && r.path.ends_with("/messages/@original") && !embeds(r).is_empty()
}

pub fn callback_of(token: &str) -> impl Fn(&Recorded) -> bool + '_ {
    move |r| r.method == "POST" && r.path.ends_with(&format!("/{token}/callback"))
}
