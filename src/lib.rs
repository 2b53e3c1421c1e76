//! lookalike: visual product search for Discord.
//!
//! A shopper posts a photo, perhaps with a sentence ("a bed like this, but wooden"). lookalike
//! predicts the category meant (a majority vote of three fine-tuned CNN backbones on the image,
//! plus a zero-shot text classifier on the sentence), searches that part of the catalogue by
//! feature-vector similarity, and replies with the closest catalogue images.
//!
//! # Code map
//!
//! | module   | owns | knows nothing of |
//! |----------|------|------------------|
//! | [`config`] | typed config from `config/lookalike.toml` + `LOOKALIKE__SECTION__KEY` overrides, validated at start-up; the token only from `DISCORD_TOKEN` or `DISCORD_TOKEN_FILE` | everything else |
//! | [`files`]  | files written whole or not at all (temporary file, flush, rename); the heads folder's layout | everything else |
//! | [`models`] | the model manifest of both profiles, install checks (sha256), `models fetch` | Discord, index |
//! | [`imaging`] | decode with limits, EXIF orientation, RGB; resize, crop, per-backbone normalisation | torch models, Discord |
//! | [`vision`] | backbone specs and networks, GeM descriptors, heads, augmentation, ensemble vote, training (classification and metric loss), evaluation | Discord, index |
//! | [`plot`]   | PNG charts: training curves, confusion matrices, search contact sheets | torch, Discord |
//! | [`progress`] | progress bars on a terminal, periodic progress lines elsewhere | everything else |
//! | [`text`]   | the category a sentence names: lexical, MiniLM embedding and NLI methods behind one trait; typos; negation; "none"; WordNet's words for each category (`wordnet`) | index, Discord |
//! | [`catalogue`] | the catalogue folders (one sub-folder per category), content hashes, metadata (CSV / JSON lines); adding and removing one item with its metadata row | torch, Discord |
//! | [`index`]  | the catalogue index behind one `Backend` trait: exact ranking and the incremental re-index plan both backends share (taken up where an interrupted one stopped, from its partial file); `embedded` (4-bit codes scanned in memory, the best candidates re-scored exactly from the vectors on disk; generations: checksummed, swapped atomically, fallback past damage; an OS re-index lock) and `postgres` (pgvector tables per generation made visible in one insert, an advisory re-index lock, HNSW for large categories, a read replica) | torch, Discord |
//! | [`search`] | `SearchService`, the one entry point of the CLI and the bot: decode, micro-batched models, decide, search, timings; re-index while serving, catalogue edits under the re-index lock, new heads swapped in (`upkeep`). Its model thread is private (the bench has one named hook) | Discord |
//! | [`retrieval`] | `eval --retrieval`: R@1, R@5, vote accuracy and same-category precision@5 of pictures of the same items, through the whole search | Discord |
//! | [`feedback`] | corrections picked under "Wrong category?": stored bounded on disk (each photo once), trusted when a moderator or enough distinct shoppers agree, exported as training folders | torch, Discord |
//! | [`audit`] | the audit log: every catalogue edit, correction and swap of heads, with who and when | torch, Discord |
//! | [`decide`] | image vote + text intent -> ordered categories to search, with reasons (pure) | torch, Discord |
//! | [`worker`] | the model thread that owns every torch / rust-bert object; jobs in, answers out | Discord |
//! | [`bench`]  | `lookalike bench`: the per-stage / concurrency / indexing / memory table for both profiles beside a python torchvision pipeline, and its parts; ratios against baselines measured in the same run | Discord |
//! | [`demo`]   | `lookalike demo`: the Fashion-MNIST catalogue, heads if missing, index, queries, contact sheet | Discord |
//! | [`discord`] | the bot: serenity client (optionally through `discord.api_proxy`); one file per command or interaction (`search`, `mention`, `buttons`, `catalogue` (with the moderators' edits), `help`, `reindex`); `explain`, the one place that words failures for users; attachment checks; the bounded store of recent searches; rendering a `SearchOutcome` as embeds | torch, index internals |
//! | [`metrics`] | the process's Prometheus metrics (searches by outcome and entry point, stage histograms, batch sizes, index generation and items, re-indexes, gateway shards), recorded where things happen | everything else |
//! | [`ops`]    | production operation: `/metrics`, `/healthz`, `/readyz` on `serve.metrics_addr`; requests in flight and the drain a graceful shutdown waits for | serenity |
//! | [`cli`]    | clap definitions and dispatch; `main.rs` only parses, sets up logs and config, and calls it. Nothing calls back into it | Discord |
//!
//! # Invariants
//!
//! - Tensors never leave `imaging`, `vision` and `text` (and `bench`, which times them); torch and rust-bert calls never run on a
//!   tokio worker thread (a model thread owns them).
//! - serenity appears only in the Discord module; the core returns plain data.
//! - No model or index file is ever half-written: files are written beside their destination,
//!   flushed, then renamed into place.
//! - The Discord token never appears in a config file, a log line or an error message.

pub mod audit;
pub mod bench;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod decide;
pub mod demo;
pub mod discord;
pub mod feedback;
pub mod files;
pub mod imaging;
pub mod index;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod retrieval;
pub mod search;
pub mod text;
pub mod vision;
pub mod worker;
