//! lookalike: visual product search for Discord.
//!
//! A shopper posts a photo, perhaps with a sentence ("a bed like this, but wooden"), or words
//! alone ("red canvas totes under $20"). lookalike predicts the category meant (a majority vote
//! of three fine-tuned CNN backbones on the image, plus a zero-shot text classifier on the
//! sentence), searches that part of the catalogue by feature-vector similarity and by the items'
//! own words, refines by the colours, materials and prices the sentence names, and replies with
//! the closest catalogue images.
//!
//! # Code map
//!
//! The one map of the code (the README points here). Each module's own documentation says what
//! its files hold. `map_test.rs` holds the map to the code: every name in the last column is
//! checked against the `crate::` paths and external crates each module's code names (comments
//! and tests aside), and so are the invariants below that a reader can check.
//!
//! Names in the last column are modules (`index`), crates (`tch`), or these groups:
//! - torch: `tch`, `rust_bert`, `vision`, `text`, `clip`, `worker`
//! - Discord: `serenity`, `discord`
//! - the rest: every other module of this crate
//!
//! | module   | owns | knows nothing of |
//! |----------|------|------------------|
//! | [`config`] | typed config from `config/lookalike.toml` + `LOOKALIKE__SECTION__KEY` overrides, validated at start-up with errors that name the key; every section, `serve` included; the token only from `DISCORD_TOKEN` or the file `DISCORD_TOKEN_FILE` names | the rest |
//! | [`files`]  | files written whole or not at all (temporary file, flush, rename); the heads folder's layout | the rest |
//! | [`progress`] | progress bars on a terminal, periodic progress lines elsewhere | the rest |
//! | [`rng`]    | the project's own seeded random generator: shuffles, augmentation, the vectors tests and benchmarks make in Rust (libtorch seeds its own) | the rest |
//! | [`metrics`] | the process's Prometheus metrics (searches by outcome and [`metrics::Entry`], stage histograms, batch sizes, index generation and items, re-indexes, gateway shards), recorded where things happen | the rest |
//! | [`worker`] | the model thread that owns every torch / rust-bert object; jobs in, answers out; a panicking job fails only its caller | the rest |
//! | [`imaging`] | image bytes to pixels: decode with limits, EXIF orientation, alpha on white, RGB. No tensors | torch, Discord, `index`, `catalogue`, `search` |
//! | [`colour`] | colour from pixels: an item's dominant colours in CIELAB (background and transparent pixels left out), CIEDE2000 differences, the table of colours shoppers name | the rest |
//! | [`catalogue`] | the catalogue folders (one sub-folder per category) and walking labelled folders, the image extensions, content hashes, metadata (CSV / JSON lines); adding and removing one item with its metadata row | torch, Discord, `index`, `search` |
//! | [`feed`] | `catalogue import`: a shop's product feed (Merchant Center XML or TSV, Shopify CSV) read into products (`parse`: formats, products, prices; `merchant`: Merchant XML/TSV; `shopify`: Shopify CSV; `text`: HTML descriptions as text, category levels and folder names), categories from a feed field's level or a mapping, pictures downloaded a bounded number at a time with retries and kept until written, internal addresses refused for the bot (`fetch`), placed as `catalogue add` names them, one metadata row each, variants grouped | torch, Discord, `index`, `search` |
//! | [`words`] | what a sentence asks beyond a category: colours (with "light"/"dark", "not red"), material and pattern words, price ranges and price order (pure) | torch, Discord, `index`, `search` |
//! | [`audit`] | the audit log: every catalogue edit, correction and swap of heads, with who and when | torch, Discord, `index`, `search` |
//! | [`feedback`] | corrections picked under "Wrong category?": stored bounded on disk (each photo once), trusted when a moderator or enough distinct shoppers agree, exported as training folders | torch, Discord, `index`, `search` |
//! | [`plot`]   | PNG charts: training curves, confusion matrices, search contact sheets | torch, Discord, `index`, `search` |
//! | [`decide`] | image vote + the sentence's reading (the `text` module's plain `Intent`) -> ordered categories to search, with reasons (pure) | `tch`, `rust_bert`, `vision`, `worker`, Discord, `index`, `search` |
//! | [`index`]  | the catalogue index behind one `Backend` trait: exact ranking (near-duplicates and a product's variants folded into one hit) and the incremental re-index plan both backends share, run under a re-index guard the caller holds; each item's words (its colours measured from its picture at index time, its price as a number, its text in a full-text engine and as a MiniLM vector, text-only searches fused by rank, with the clip embedder the sentence's clip vector ranking the pictures too, price ranges filtered inside the query: `words`); the PCA-whitening of the vectors' descriptor part, learned from the catalogue at re-index, kept until enough of it changed, stored with the generation and applied to queries (`whiten`); `embedded` (4-bit codes in memory, the best candidates re-scored exactly from the vectors on disk; generations on disk) and `postgres` (pgvector tables per generation, HNSW for large categories, a read replica) | torch, Discord, `search` |
//! | [`models`] | the model manifest of both profiles, install checks (sha256), `models fetch` (download, check, convert with `tch`) | `rust_bert`, `vision`, `text`, Discord, `index`, `search` |
//! | [`clip`]   | OpenCLIP's image-text model (ViT-B/32): one transformer for both towers, named as open_clip's state dict so the weights `models fetch clip` converts load by name, sizes read from the file; its BPE tokenizer over the vocabulary open_clip's wheel ships; either tower loads alone; the image tower's linear layers optionally in 8 bits on the CPU | `rust_bert`, `vision`, `text`, Discord, `index`, `search` |
//! | [`text`]   | the category a sentence names: lexical, embedding (MiniLM, or the clip embedder's text tower against prompts) and NLI methods behind one trait; typos; negation; "none"; WordNet's words for each category; the one loaded MiniLM's sentence vectors, for items' texts and searches by words, and the clip text tower's, compared with the items' pictures | `vision`, Discord, `index`, `search` |
//! | [`vision`] | backbone specs and networks (stages, so the last ones can be tuned alone), preprocessing into tensors, descriptors (GeM, optionally over regions, at several scales, with the query's mirror image), heads, augmentation, ensemble vote (beside it, with `index.embedding = "clip"`, the clip embedder's image tower and open_clip's transform), training, styled renderings of a picture (`styles`), tuning the last stages on cached maps (`tune`), evaluation (through an in-memory `index`) | `text`, Discord, `search` |
//! | [`search`] | `SearchService`, the query path of the bot and of `lookalike search`: admission, decode, the model thread's queue (micro-batches capped at `search.max_batch`, queries whose requester left dropped), decide, search (the photo's vector whitened as the generation's are, optionally expanded by its first hits), timings; searches by words alone (no backbone runs) and what the sentence's colours, attributes and price do to the hits (`refine`: the photo dyed the colour asked, re-ranking, reasons; a product's variants folded after the re-rank); its `Upkeep` handle: re-index while serving, catalogue edits and feed imports under the re-index guard, new heads swapped in | Discord, `cli`, `bench` |
//! | [`report`] | a search outcome as `lookalike search` prints it, and as a contact-sheet row | torch, Discord |
//! | [`retrieval`] | `eval --retrieval`: R@1, R@5, vote accuracy and same-category precision@5 of pictures of the same items, through the whole search | Discord |
//! | [`words_eval`] | `eval --words`: the words benchmark (names, paraphrases, colour changes on a photo, price phrases) on Fashion-MNIST photos tinted per variant, through the whole search | Discord |
//! | [`demo`]   | `lookalike demo`: the Fashion-MNIST catalogue, heads if missing, index, queries, contact sheet | Discord |
//! | [`bench`]  | `lookalike bench`: the per-stage / concurrency / indexing / memory table for both profiles beside a python torchvision pipeline, and its parts (search by words alone at 10,000 items, and importing a product feed from loopback against indexing from disk, among them); ratios against baselines measured in the same run. It reaches the model thread through two hooks of `SearchService` (`bench_probe`, `pooled_features`) | Discord |
//! | [`ops`]    | production operation: `/metrics`, `/healthz`, `/readyz` on `serve.metrics_addr`; requests in flight and the drain a graceful shutdown waits for | torch, Discord |
//! | [`discord`] | the bot: serenity client (optionally through `discord.api_proxy`); one file per command or interaction, each with its registration; `explain`, which words for users every error a search, a re-index or a catalogue edit returns (a command's own refusals, made before the core is called, are worded where they are made); attachment checks; the bounded store of recent searches; rendering a `SearchOutcome` as embeds | torch |
//! | [`cli`]    | clap definitions and dispatch; `main.rs` only parses, sets up logs and config, and calls it. Train, `eval --data` and `intent` run their models on a model thread of their own; everything that searches goes through `SearchService` | — |
//!
//! # Invariants
//!
//! - Nothing calls back into `cli`.
//! - `tch` appears only in `vision`, `text`, `clip`, `models` (converting weights) and `bench` (timing
//!   bare passes); `rust_bert` only in `text`; `serenity` only in `discord`. The core returns
//!   plain data; the Discord module turns it into messages.
//! - Torch and rust-bert calls never run on a tokio worker thread: a model thread owns them.
//! - No model or index file is ever half-written: files are written beside their destination,
//!   flushed, then renamed into place.
//! - The Discord token never appears in a config file, a log line or an error message.
//! - No function outside tests is longer than 100 lines.

pub mod audit;
pub mod bench;
pub mod catalogue;
pub mod cli;
pub mod clip;
pub mod colour;
pub mod config;
pub mod decide;
pub mod demo;
pub mod discord;
pub mod feed;
pub mod feedback;
pub mod files;
pub mod imaging;
pub mod index;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod report;
pub mod retrieval;
pub mod rng;
pub mod search;
pub mod text;
pub mod vision;
pub mod words;
pub mod words_eval;
pub mod worker;

#[cfg(test)]
mod map_test;
