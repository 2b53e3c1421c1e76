//! The PostgreSQL + pgvector backend: one index shared by several bot processes (or machines),
//! searches optionally from a read replica, re-indexed from anywhere.
//!
//! Schema (created and migrated by the program, version in `lookalike_schema`):
//! `lookalike_generations` has a row per finished generation (its key, categories, the ones
//! searched through HNSW); each generation's vectors are a table `lookalike_items_N` (row,
//! category, item as JSON, `embedding vector(D)`, `price real`, the item's `words` with their
//! `tsv tsvector` under a GIN index, the words' sentence vector `text_embedding`; price
//! filters are `WHERE` clauses of the query itself), written whole before its generation row is
//! inserted, so readers see a new generation in one step and never half of one. A re-index holds
//! a session advisory lock, which the server releases when its connection ends however it ends;
//! a killed re-index leaves an orphan table the next one drops.
//!
//! Candidates come from the database (an exact ORDER BY per category, or HNSW for categories of
//! at least `index.hnsw_min_rows`), with their vectors; [`super::rank`] scores and ranks them
//! again exactly as the embedded index does, so small categories give identical hits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use pgvector::Vector;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::Type;
use postgres::{Client, NoTls};

use super::rank::{self, dot, Candidate};
use super::reindex::{self, Previous, Stored};
use super::whiten::Whitening;
use super::words::{self as shared, Ranked, Tally, WordsQuery};
use super::{Backend, Embedder, EmbeddingKey, Generation, Hit, IndexError, Item, Page, Progress, ReindexError, ReindexGuard, ReindexJob, ReindexSummary, Scope, SearchMethod, SearchParams, Snapshot};
use crate::config::{IndexConfig, Metric};
use crate::words::PriceRange;

/// Version of the tables this code reads and writes.
pub const SCHEMA_VERSION: i32 = 1;
/// Generations kept: the newest and two that searches already under way may still read.
const KEEP_GENERATIONS: i64 = 3;
/// The advisory lock a re-index holds (any constant shared by every lookalike process).
const REINDEX_LOCK: i64 = 0x6c6f_6f6b_616c_696b;
/// pgvector's HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000; wider
/// vectors are indexed by their binary quantisation (one bit a dimension) and re-ranked exactly.
const HNSW_VECTOR_MAX_DIM: usize = 2000;
const HNSW_HALFVEC_MAX_DIM: usize = 4000;
/// pgvector's largest `hnsw.ef_search`.
const MAX_EF_SEARCH: usize = 1000;

/// The backend's settings (`index.postgres_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub read_url: String,
    pub hnsw_min_rows: usize,
    pub ef_search: usize,
}

impl Settings {
    pub fn from_config(config: &IndexConfig) -> anyhow::Result<Settings> {
        anyhow::ensure!(
            !config.postgres_url.trim().is_empty(),
            "index.backend = \"postgres\" needs index.postgres_url (or LOOKALIKE__INDEX__POSTGRES_URL), e.g. postgres://lookalike@db.internal:5432/lookalike"
        );
        Ok(Settings { url: config.postgres_url.clone(), read_url: config.postgres_read_url.clone(), hnsw_min_rows: config.hnsw_min_rows, ef_search: config.hnsw_ef_search })
    }
}

/// Connections to one server, opened when needed and kept while they work.
struct Pool {
    config: postgres::Config,
    /// `postgres://user@host:port/db`, never the password.
    shown: String,
    key: &'static str,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    fn new(url: &str, key: &'static str) -> anyhow::Result<Pool> {
        let mut config: postgres::Config = url.parse().map_err(|err| anyhow::anyhow!("{key} is not a PostgreSQL URL ({err}); write it as postgres://USER@HOST:PORT/DATABASE"))?;
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        config.connect_timeout(Duration::from_secs(5)).application_name("lookalike");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let shown = format!("postgres://{}@{}:{}/{}", config.get_user().unwrap_or(""), hosts.join(","), ports.join(","), config.get_dbname().unwrap_or(""));
        Ok(Pool { config, shown, key, idle: Mutex::new(Vec::new()) })
    }

    fn connect(&self) -> Result<Client, IndexError> {
        self.config.connect(NoTls).map_err(|err| IndexError::Unavailable(format!("cannot connect to {} ({}): {}", self.shown, self.key, cause(&err))))
    }

    /// Runs `work` on a pooled connection. A connection the server closed (a restart) is
    /// replaced and the work tried once more, so a database that came back answers at once.
    fn with<R>(&self, mut work: impl FnMut(&mut Client) -> Result<R, postgres::Error>) -> Result<R, IndexError> {
        for attempt in 0..2 {
            let pooled = self.idle.lock().expect("pool lock").pop();
            let mut client = match pooled {
                Some(client) => client,
                None => self.connect()?,
            };
            match work(&mut client) {
                Ok(answer) => {
                    self.idle.lock().expect("pool lock").push(client);
                    return Ok(answer);
                }
                Err(err) if client.is_closed() && attempt == 0 => tracing::info!("a connection to {} was closed ({}); reconnecting", self.shown, cause(&err)),
                Err(err) => {
                    if !client.is_closed() {
                        self.idle.lock().expect("pool lock").push(client);
                    }
                    return Err(classify(&err, &self.shown));
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// The innermost message of a database error (the driver's own says only "db error").
fn cause(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => std::error::Error::source(err).map_or(err.to_string(), |source| source.to_string()),
    }
}

/// Whether a failure is the database being away (worth retrying later) or something to fix.
fn classify(err: &postgres::Error, shown: &str) -> IndexError {
    let away = [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW, SqlState::CONNECTION_FAILURE];
    let io = std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>());
    match err.code() {
        None if err.is_closed() || io => IndexError::Unavailable(format!("{shown}: {}", cause(err))),
        None => IndexError::Unusable(format!("the catalogue database {shown} answered what this lookalike cannot read ({}): re-index with `lookalike index`", cause(err))),
        Some(code) if away.contains(code) => IndexError::Unavailable(format!("{shown}: {}", cause(err))),
        Some(_) => IndexError::Unusable(format!("the catalogue database {shown} refused a query ({}): see the server's log; a re-index (`lookalike index`) rebuilds lookalike's tables", cause(err))),
    }
}

fn items_table(generation: u64) -> String {
    format!("lookalike_items_{generation}")
}

/// A category name as an SQL literal (partial indexes match only literal predicates).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The expression HNSW indexes and orders by, for vectors of `dim` dimensions; `$1` is the
/// query. The cosine operator: vectors are unit length, so it ranks as the Euclidean one does.
fn hnsw_expression(dim: usize) -> (String, String, &'static str) {
    if dim <= HNSW_VECTOR_MAX_DIM {
        ("embedding".into(), "embedding <=> $1".into(), "vector_cosine_ops")
    } else if dim <= HNSW_HALFVEC_MAX_DIM {
        (format!("(embedding::halfvec({dim}))"), format!("embedding::halfvec({dim}) <=> ($1::vector)::halfvec({dim})"), "halfvec_cosine_ops")
    } else {
        (format!("(binary_quantize(embedding)::bit({dim}))"), format!("binary_quantize(embedding)::bit({dim}) <~> binary_quantize($1::vector)"), "bit_hamming_ops")
    }
}

/// The price range as a `WHERE` clause on the table aliased `i`, its bounds bound from
/// parameter `first` on (an open bound is NULL and admits every row, a set one only rows with a
/// price). Empty, with no parameters, when the range is open: a generation written before items
/// had prices answers image searches as before.
fn price_clause(price: &PriceRange, first: usize) -> (String, [Option<f32>; 2]) {
    let clause = format!("AND (${first}::real IS NULL OR i.price >= ${first}) AND (${second}::real IS NULL OR i.price <= ${second})", second = first + 1);
    (if price.is_open() { String::new() } else { clause }, [price.min, price.max])
}

/// `base` parameters, then the price bounds when `clause` uses them.
fn with_bounds<'a>(mut base: Vec<&'a (dyn postgres::types::ToSql + Sync)>, clause: &str, bounds: &'a [Option<f32>; 2]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    if !clause.is_empty() {
        base.extend(bounds.iter().map(|b| b as &(dyn postgres::types::ToSql + Sync)));
    }
    base
}

/// A candidate as the database returns it: the scope it answers, the item (JSON), its vector.
struct Fetched {
    scope: usize,
    item: String,
    vector: Vec<f32>,
}

/// The newest generation's row, as stored.
struct Newest {
    number: u64,
    created_unix_s: u64,
    key: String,
    categories: String,
    hnsw: String,
}

/// The PostgreSQL backend.
/// A generation's (number, creation time) and its whitening.
type CachedWhitening = ((u64, u64), Option<Arc<Whitening>>);

pub struct Postgres {
    settings: Settings,
    write: Pool,
    read: Pool,
    /// The newest generation's whitening, read once per generation rather than per search.
    whitening: std::sync::Mutex<Option<CachedWhitening>>,
}

impl Postgres {
    /// Connects to the primary (and the read replica, if set) and checks the schema version,
    /// so a wrong URL or a database from another lookalike fails at start, naming the key.
    pub fn connect(settings: &Settings) -> anyhow::Result<Postgres> {
        let write = Pool::new(&settings.url, "index.postgres_url")?;
        let read = if settings.read_url.trim().is_empty() { Pool::new(&settings.url, "index.postgres_url")? } else { Pool::new(&settings.read_url, "index.postgres_read_url")? };
        for pool in [&write, &read] {
            let version = pool.with(schema_version).map_err(|err| anyhow::anyhow!("{err}; is the server running, and is {} right?", pool.key))?;
            check_version(version, &pool.shown)?;
        }
        Ok(Postgres { settings: settings.clone(), write, read, whitening: Default::default() })
    }

    /// Each scope's best `depth` candidates (with their vectors), and the scopes that had more.
    fn candidates(&self, generation: &Generation, query: &Vector, scopes: &[&Scope], depth: usize, metric: Metric, price: &PriceRange) -> Result<Vec<Fetched>, IndexError> {
        let table = items_table(generation.number);
        let operator = match metric {
            Metric::Cosine => "<=>",
            Metric::Euclidean => "<->",
        };
        let (exact, hnsw): (Vec<_>, Vec<_>) = scopes.iter().enumerate().partition(|(_, scope)| !generation.approximate().contains(&scope.category));
        let exact_names: Vec<&str> = exact.iter().map(|(_, scope)| scope.category.as_str()).collect();
        let (_, order, _) = hnsw_expression(generation.key.dim);
        let ef_search = self.settings.ef_search.max(depth).min(MAX_EF_SEARCH) as i64;
        let depth = depth as i64;
        self.read.with(|client| {
            let mut found = Vec::new();
            if !exact_names.is_empty() {
                let (filter, bounds) = price_clause(price, 4);
                let sql = format!(
                    "SELECT s.ord, t.item, t.embedding FROM unnest($1::text[]) WITH ORDINALITY AS s(category, ord) \
                     CROSS JOIN LATERAL (SELECT item, embedding FROM {table} i WHERE i.category = s.category {filter} ORDER BY i.embedding {operator} $2 LIMIT $3) t"
                );
                for row in client.query(&sql, &with_bounds(vec![&exact_names, query, &depth], &filter, &bounds))? {
                    let ord: i64 = row.get(0);
                    found.push(Fetched { scope: exact[ord as usize - 1].0, item: row.get(1), vector: row.get::<_, Vector>(2).to_vec() });
                }
            }
            if !hnsw.is_empty() {
                let mut transaction = client.transaction()?;
                // The planner's cost estimate sometimes prefers an exact scan and sort to the HNSW
                // index: at 100,000 x 3,072 it did so at ef_search 200 (1.2 s a query instead of
                // 15 ms) though not at 100 or 400. Categories this large are HNSW's by design.
                transaction.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef_search}; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off"))?;
                let (filter, bounds) = price_clause(price, 3);
                if !filter.is_empty() {
                    // A price filter would leave the graph walk short of `depth` rows; pgvector
                    // 0.8's iterative scan (needed for price filters on HNSW categories) walks on
                    // until enough rows pass it.
                    transaction.batch_execute("SET LOCAL hnsw.iterative_scan = relaxed_order")?;
                }
                for (position, scope) in &hnsw {
                    let sql = format!("SELECT item, embedding FROM {table} i WHERE category = {} {filter} ORDER BY {order} LIMIT $2", literal(&scope.category));
                    for row in transaction.query(&sql, &with_bounds(vec![query, &depth], &filter, &bounds))? {
                        found.push(Fetched { scope: *position, item: row.get(0), vector: row.get::<_, Vector>(1).to_vec() });
                    }
                }
                transaction.commit()?;
            }
            Ok(found)
        })
    }
}

fn schema_version(client: &mut Client) -> Result<Option<i32>, postgres::Error> {
    let exists: bool = client.query_one("SELECT to_regclass('lookalike_schema') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client.query_opt("SELECT version FROM lookalike_schema", &[])?.map(|row| row.get(0)))
}

fn check_version(version: Option<i32>, shown: &str) -> anyhow::Result<()> {
    match version {
        Some(version) if version != SCHEMA_VERSION => anyhow::bail!(
            "the catalogue database {shown} holds lookalike schema version {version}; this lookalike reads version {SCHEMA_VERSION}: run the lookalike that wrote it, or point index.postgres_url at a new database and re-index"
        ),
        _ => Ok(()),
    }
}

/// Creates the extension and the tables on a database that has none; checks the version.
fn migrate(client: &mut Client, shown: &str) -> anyhow::Result<()> {
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").map_err(|err| {
        anyhow::anyhow!(
            "pgvector is not available in the catalogue database {shown} ({}): install the pgvector package on the server, then run `CREATE EXTENSION vector;` in that database as a superuser",
            cause(&err)
        )
    })?;
    let version = schema_version(client)?;
    check_version(version, shown)?;
    if version.is_none() {
        let mut transaction = client.transaction()?;
        transaction.batch_execute(
            "CREATE TABLE IF NOT EXISTS lookalike_generations (
                 generation bigint PRIMARY KEY,
                 created_unix_s bigint NOT NULL,
                 key text NOT NULL,
                 catalogue text NOT NULL,
                 categories text NOT NULL,
                 hnsw text NOT NULL,
                 failed text NOT NULL);
             CREATE TABLE lookalike_schema (version integer NOT NULL);",
        )?;
        transaction.execute("INSERT INTO lookalike_schema VALUES ($1)", &[&SCHEMA_VERSION])?;
        transaction.commit()?;
    }
    // Whitenings came later: databases made before them gain the table here.
    client.batch_execute("CREATE TABLE IF NOT EXISTS lookalike_whitening (generation bigint PRIMARY KEY, bytes bytea NOT NULL)")?;
    Ok(())
}

/// Generation `number`'s whitening as stored, if it has one.
fn whitening_bytes(client: &mut Client, number: u64) -> Result<Option<Vec<u8>>, postgres::Error> {
    let exists: bool = client.query_one("SELECT to_regclass('lookalike_whitening') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client.query_opt("SELECT bytes FROM lookalike_whitening WHERE generation = $1", &[&(number as i64)])?.map(|row| row.get(0)))
}

fn read_whitening(bytes: Option<Vec<u8>>, number: u64) -> anyhow::Result<Option<Arc<Whitening>>> {
    bytes.map(|bytes| Whitening::from_bytes(&bytes).map(Arc::new).with_context(|| format!("generation {number}'s whitening is damaged"))).transpose()
}

fn newest(client: &mut Client) -> Result<Option<Newest>, postgres::Error> {
    let exists: bool = client.query_one("SELECT to_regclass('lookalike_generations') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(None);
    }
    let row = client.query_opt("SELECT generation, created_unix_s, key, categories, hnsw FROM lookalike_generations ORDER BY generation DESC LIMIT 1", &[])?;
    Ok(row.map(|row| Newest { number: row.get::<_, i64>(0) as u64, created_unix_s: row.get::<_, i64>(1) as u64, key: row.get(2), categories: row.get(3), hnsw: row.get(4) }))
}

impl Postgres {
    fn vectors_of(&self, generation: &Generation, hits: &[Hit]) -> Result<Vec<Vec<f32>>, IndexError> {
        let table = items_table(generation.number);
        let categories: Vec<&str> = hits.iter().map(|h| h.item.category.as_str()).collect();
        let ids: Vec<&str> = hits.iter().map(|h| h.item.id.as_str()).collect();
        let sql = format!("SELECT item::jsonb->>'id', embedding FROM {table} WHERE category = ANY($1) AND item::jsonb->>'id' = ANY($2)");
        let found: HashMap<String, Vec<f32>> = self.read.with(|client| Ok(client.query(&sql, &[&categories, &ids])?.iter().map(|row| (row.get(0), row.get::<_, Vector>(1).to_vec())).collect()))?;
        ids.iter().map(|id| found.get(*id).cloned().ok_or_else(|| IndexError::Unusable(format!("{id} is not in generation {}", generation.number)))).collect()
    }
}

impl Backend for Postgres {
    fn stored_vectors(&self, generation: &Generation, hits: &[Hit]) -> Result<Vec<Vec<f32>>, IndexError> {
        self.vectors_of(generation, hits)
    }

    fn location(&self) -> String {
        self.write.shown.clone()
    }

    fn current(&self) -> Result<Option<Arc<Generation>>, IndexError> {
        let Some(Newest { number, created_unix_s, key, categories, hnsw }) = self.read.with(newest)? else { return Ok(None) };
        let damaged = |what: &str, err: serde_json::Error| IndexError::Unusable(format!("generation {number} in {} has a damaged {what} ({err}): re-index", self.read.shown));
        // By number and time: a number reused after a failed re-index is another generation.
        let cached = self.whitening.lock().expect("whitening cache").as_ref().filter(|(n, _)| *n == (number, created_unix_s)).map(|(_, w)| w.clone());
        let whitening = match cached {
            Some(whitening) => whitening,
            None => {
                let bytes = self.read.with(|client| whitening_bytes(client, number))?;
                let read = read_whitening(bytes, number).map_err(|err| IndexError::Unusable(format!("{err:#}: re-index")))?;
                *self.whitening.lock().expect("whitening cache") = Some(((number, created_unix_s), read.clone()));
                read
            }
        };
        Ok(Some(Arc::new(Generation {
            whitening,
            number,
            key: serde_json::from_str(&key).map_err(|e| damaged("key", e))?,
            created_unix_s,
            categories: serde_json::from_str(&categories).map_err(|e| damaged("category list", e))?,
            snapshot: Snapshot::Database { approximate: serde_json::from_str(&hnsw).map_err(|e| damaged("HNSW list", e))? },
        })))
    }

    fn search(&self, generation: &Generation, query: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        let dim = generation.key.dim;
        if query.len() != dim {
            return Err(IndexError::DimensionMismatch { expected: dim, got: query.len() });
        }
        let scopes: Vec<&Scope> = scopes.iter().filter(|s| generation.categories.iter().any(|c| c.name == s.category)).collect();
        let method = if scopes.iter().any(|s| generation.approximate().contains(&s.category)) { SearchMethod::Hnsw } else { SearchMethod::Exact };
        let (query_vector, query_norm) = (Vector::from(query.to_vec()), dot(query, query).sqrt());
        // Enough for the page even after near-duplicates fold; more if folding used them all.
        let mut depth = 4 * (params.offset + params.k + 1) + 32;
        loop {
            let found = self.candidates(generation, &query_vector, &scopes, depth, params.metric, &params.price)?;
            let mut items = Vec::with_capacity(found.len());
            let mut vectors = Vec::with_capacity(found.len());
            let mut candidates = Vec::with_capacity(found.len());
            let mut per_scope = vec![(0usize, None::<usize>); scopes.len()];
            for (slot, Fetched { scope: position, item, vector }) in found.into_iter().enumerate() {
                let item: Item = serde_json::from_str(&item).map_err(|err| IndexError::Unusable(format!("a damaged item in generation {}: {err}: re-index", generation.number)))?;
                let norm = dot(&vector, &vector).sqrt();
                if let Some(candidate) = Candidate::scored(slot, dot(&vector, query), norm, query_norm, scopes[position], params.min_similarity) {
                    candidates.push(candidate);
                }
                per_scope[position] = (per_scope[position].0 + 1, Some(slot));
                items.push(item);
                vectors.push((vector, norm));
            }
            let ranked = rank::rank(candidates, params, method, |slot| &vectors[slot].0, |slot| vectors[slot].1, |slot| items[slot].clone());
            // A scope cut at `depth` whose last candidate was needed may hold better ones further down.
            let short = per_scope.iter().any(|&(count, last)| count >= depth && last.is_some_and(|last| ranked.consumed.contains(&last)));
            if !short {
                return Ok(ranked.page);
            }
            depth *= 4;
        }
    }

    fn search_words(&self, generation: &Generation, query: &WordsQuery, scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        let table = items_table(generation.number);
        let names: Vec<&str> = scopes.iter().map(|s| s.category.as_str()).collect();
        // Terms are letters and digits (see `words::terms`); websearch syntax joins them by OR.
        let terms = query.terms.iter().filter(|t| t.chars().all(char::is_alphanumeric)).cloned().collect::<Vec<_>>().join(" or ");
        let vector = (!query.vector.is_empty()).then(|| Vector::from(query.vector.clone()));
        let (price_min, price_max) = (params.price.min, params.price.max);
        let query_norm = query.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        let read = |rows: Vec<postgres::Row>| -> Result<Vec<Ranked>, IndexError> {
            rows.into_iter()
                .map(|row| {
                    let item: Item = serde_json::from_str(row.get::<_, &str>(1)).map_err(|err| IndexError::Unusable(format!("a damaged item in generation {}: {err}: re-index", generation.number)))?;
                    // pgvector's cosine distance is 1 - cosine; item text vectors are unit length.
                    let text = row.get::<_, Option<f32>>(2).map(|distance| (1.0 - distance, (1.0 + query_norm * query_norm - 2.0 * query_norm * (1.0 - distance)).max(0.0).sqrt()));
                    Ok(Ranked { item, scope: row.get::<_, i64>(0) as usize - 1, text })
                })
                .collect()
        };
        let rankings = |depth: usize| -> Result<Vec<Vec<Ranked>>, IndexError> {
            let pictures = shared::picture_ranking(|vector, deep| self.search(generation, vector, scopes, deep), query, generation.key.dim, scopes, params, depth)?;
            let depth = depth as i64;
            let found = self.read.with(|client| {
                let mut lists = (Vec::new(), Vec::new());
                if !terms.is_empty() {
                    let sql = format!(
                        "SELECT s.ord, i.item, CASE WHEN $4::vector IS NULL OR i.text_embedding IS NULL THEN NULL ELSE (i.text_embedding <=> $4)::real END \
                         FROM {table} i JOIN unnest($1::text[]) WITH ORDINALITY AS s(category, ord) ON s.category = i.category, websearch_to_tsquery('english', $2) q \
                         WHERE i.tsv @@ q AND ($5::real IS NULL OR i.price >= $5) AND ($6::real IS NULL OR i.price <= $6) ORDER BY ts_rank(i.tsv, q) DESC, i.row LIMIT $3"
                    );
                    lists.0 = client.query(&sql, &[&names, &terms, &depth, &vector, &price_min, &price_max])?;
                }
                if let Some(vector) = &vector {
                    let sql = format!(
                        "SELECT s.ord, i.item, (i.text_embedding <=> $2)::real FROM {table} i JOIN unnest($1::text[]) WITH ORDINALITY AS s(category, ord) ON s.category = i.category WHERE i.text_embedding IS NOT NULL AND ($4::real IS NULL OR i.price >= $4) AND ($5::real IS NULL OR i.price <= $5) ORDER BY i.text_embedding <=> $2, i.row LIMIT $3"
                    );
                    lists.1 = client.query(&sql, &[&names, vector, &depth, &price_min, &price_max])?;
                }
                Ok(lists)
            })?;
            Ok(vec![read(found.0)?, read(found.1)?, pictures])
        };
        shared::fuse_deepening(rankings, scopes, params)
    }

    fn tally(&self, generation: &Generation, categories: &[String], price: &PriceRange, attributes: &[Vec<String>]) -> Result<Tally, IndexError> {
        let table = items_table(generation.number);
        // An attribute is mentioned when one of its forms is a whole word of the item's words,
        // as the embedded index counts it: `\m` and `\M` are PostgreSQL's word boundaries.
        let patterns: Vec<String> =
            attributes.iter().map(|forms| format!("\\m({})\\M", forms.iter().filter(|f| f.chars().all(char::is_alphanumeric)).cloned().collect::<Vec<_>>().join("|"))).collect();
        let (items, priced_in, mentions) = self.read.with(|client| {
            let sql = format!("SELECT count(*), count(*) FILTER (WHERE ($2::real IS NULL OR price >= $2) AND ($3::real IS NULL OR price <= $3)) FROM {table} WHERE category = ANY($1)");
            let counts = client.query_one(&sql, &[&categories, &price.min, &price.max])?;
            let sql = format!("SELECT (SELECT count(*) FROM {table} i WHERE i.category = ANY($1) AND lower(i.words) ~ a.p) FROM unnest($2::text[]) WITH ORDINALITY AS a(p, ord) ORDER BY a.ord");
            let mentions: Vec<i64> = client.query(&sql, &[&categories, &patterns])?.iter().map(|row| row.get(0)).collect();
            Ok((counts.get::<_, i64>(0), counts.get::<_, i64>(1), mentions))
        })?;
        Ok(Tally { items: items as usize, priced_in: priced_in as usize, mentions: mentions.into_iter().map(|m| m as usize).collect() })
    }

    fn lock_reindex(&self) -> Result<Box<dyn ReindexGuard + '_>, ReindexError> {
        let shown = self.write.shown.clone();
        let mut lock = self.write.connect().map_err(|err| anyhow::anyhow!("{err}; is the server running, and is index.postgres_url right?"))?;
        let read_only: bool = lock.query_one("SELECT pg_is_in_recovery()", &[]).context("cannot query the catalogue database")?.get(0);
        if read_only {
            return Err(
                anyhow::anyhow!("the catalogue database {shown} is a read-only replica: re-index against the primary (index.postgres_url), and point index.postgres_read_url at the replica").into()
            );
        }
        let locked: bool = lock.query_one("SELECT pg_try_advisory_lock($1)", &[&REINDEX_LOCK]).context("cannot take the re-index lock")?.get(0);
        if !locked {
            return Err(ReindexError::AlreadyRunning(format!("in another process using {shown}")));
        }
        Ok(Box::new(Locked { backend: self, session: lock }))
    }
}

/// A session holding the advisory re-index lock: the server drops the lock with the
/// connection, however this process ends.
struct Locked<'a> {
    backend: &'a Postgres,
    session: Client,
}

impl ReindexGuard for Locked<'_> {
    fn reindex(&mut self, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        self.backend.write_generation(&mut self.session, job, embed, progress)
    }
}

impl Postgres {
    /// The re-index proper, under the lock held by `client`'s session: plans against the newest
    /// generation, then stores the plan as the next one.
    fn write_generation(&self, client: &mut Client, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        migrate(client, &self.write.shown)?;
        let previous = previous_generation(client)?;
        let (whitening, previous) = match previous {
            Some(found) => match read_whitening(whitening_bytes(client, found.0).context("cannot read the newest generation's whitening")?, found.0) {
                Ok(whitening) => (whitening, Some(found)),
                // Its vectors cannot be restored: every image is embedded again.
                Err(err) => {
                    tracing::warn!("{err:#}: every image is embedded again");
                    (None, None)
                }
            },
            None => (None, None),
        };
        // A table written before database-side augmentation has no `own` column: nothing blended.
        let blended = match &previous {
            Some((number, ..)) => {
                let table = items_table(*number);
                let has_own: bool = client
                    .query_one("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'own')", &[&table])
                    .context("cannot read the newest generation's columns")?
                    .get(0);
                has_own && client.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE own IS NOT NULL)"), &[]).context("cannot read the newest generation's vectors")?.get::<_, bool>(0)
            }
            None => false,
        };
        let session = std::cell::RefCell::new(&mut *client);
        let read = |rows: &[usize]| -> anyhow::Result<Vec<Vec<f32>>> {
            let table = items_table(previous.as_ref().map_or(0, |p| p.0));
            let wanted: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let column = if blended { "own" } else { "embedding" };
            let found: HashMap<i32, Vec<f32>> = session
                .borrow_mut()
                .query(&format!("SELECT row, {column} FROM {table} WHERE row = ANY($1)"), &[&wanted])?
                .iter()
                .map(|row| (row.get::<_, i32>(0), row.get::<_, Vector>(1).to_vec()))
                .collect();
            wanted.iter().map(|row| found.get(row).cloned().ok_or_else(|| anyhow::anyhow!("row {row} of {table} is missing"))).collect()
        };
        let mut plan =
            reindex::plan(job, previous.as_ref().map(|(_, key, items, texts)| Previous { key, items, texts: texts.clone(), whitening: whitening.clone(), vectors: &read, blended }), embed, progress)?;
        reindex::sort_rows(&mut plan.rows);
        Ok(self.store(client, job, &plan, previous.map(|(number, ..)| number))?)
    }

    /// Writes `plan` as a new generation's table (rows reused from generation `previous` copied
    /// inside the server, new vectors streamed in binary), builds its indexes, then makes it
    /// visible in one insert.
    fn store(&self, client: &mut Client, job: &ReindexJob, plan: &reindex::Plan, previous: Option<u64>) -> anyhow::Result<ReindexSummary> {
        let shown = &self.write.shown;

        let last: Option<i64> = client.query_one("SELECT max(generation) FROM lookalike_generations", &[])?.get(0);
        let generation = last.unwrap_or(0) as u64 + 1;
        let table = items_table(generation);
        let dim = job.key.dim;
        client.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (row integer PRIMARY KEY, category text NOT NULL, item text NOT NULL, embedding vector({dim}) NOT NULL, \
             price real, words text NOT NULL, tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', words)) STORED, text_embedding vector, own vector)"
        ))?;
        let (mut reused, mut fresh) = (Vec::new(), Vec::new());
        for (row, (item, Stored { vector, text, own })) in plan.rows.iter().enumerate() {
            let text = (!text.is_empty()).then(|| Vector::from(text.clone()));
            match vector {
                reindex::Vector::Reused(previous_row) => reused.push((row as i32, *previous_row as i32, item, text)),
                reindex::Vector::Embedded(vector) => fresh.push((row as i32, item, vector, text, own.clone().map(Vector::from))),
            }
        }
        let price = |item: &Item| item.metadata.price_value().map(|p| p as f32);
        if let Some(previous_number) = previous {
            // The picture's vector is copied inside the server; the text's comes from the plan
            // (the words may have changed while the picture did not).
            let sql = format!(
                "INSERT INTO {table} (row, category, item, embedding, price, words, text_embedding) SELECT t.row, t.category, t.item, p.embedding, t.price, t.words, t.text::vector \
                 FROM unnest($1::int4[], $2::int4[], $3::text[], $4::text[], $5::real[], $6::text[], $7::text[]) AS t(row, prev, category, item, price, words, text) JOIN {} p ON p.row = t.prev",
                items_table(previous_number)
            );
            for chunk in reused.chunks(5000) {
                let rows: Vec<i32> = chunk.iter().map(|r| r.0).collect();
                let previous_rows: Vec<i32> = chunk.iter().map(|r| r.1).collect();
                let categories: Vec<&str> = chunk.iter().map(|r| r.2.category.as_str()).collect();
                let items: Vec<String> = chunk.iter().map(|r| serde_json::to_string(r.2)).collect::<Result<_, _>>()?;
                let prices: Vec<Option<f32>> = chunk.iter().map(|r| price(r.2)).collect();
                let words: Vec<String> = chunk.iter().map(|r| r.2.metadata.words()).collect();
                let texts: Vec<Option<String>> = chunk.iter().map(|r| r.3.as_ref().map(vector_literal)).collect();
                client.execute(&sql, &[&rows, &previous_rows, &categories, &items, &prices, &words, &texts])?;
            }
        }
        let vector_type = client.prepare("SELECT $1::vector")?.params()[0].clone();
        let mut writer = BinaryCopyInWriter::new(
            client.copy_in(&format!("COPY {table} (row, category, item, embedding, price, words, text_embedding, own) FROM STDIN (FORMAT binary)"))?,
            &[Type::INT4, Type::TEXT, Type::TEXT, vector_type.clone(), Type::FLOAT4, Type::TEXT, vector_type.clone(), vector_type],
        );
        for (row, item, vector, text, own) in &fresh {
            writer.write(&[row, &item.category, &serde_json::to_string(item)?, &Vector::from(vector.to_vec()), &price(item), &item.metadata.words(), text, own])?;
        }
        writer.finish()?;

        let categories = reindex::count_categories(plan.rows.iter().map(|(item, _)| item));
        let approximate: Vec<String> = categories.iter().filter(|c| c.vectors >= self.settings.hnsw_min_rows).map(|c| c.name.clone()).collect();
        client.batch_execute(&format!("CREATE INDEX ON {table} (category); CREATE INDEX ON {table} USING gin (tsv)"))?;
        if !approximate.is_empty() {
            // The graph is built fastest when it fits in memory: ~2 bytes a dimension a row.
            client.batch_execute("SET maintenance_work_mem = '2GB'")?;
            let (indexed, _, operators) = hnsw_expression(dim);
            for name in &approximate {
                tracing::info!("building the HNSW index of {name} ({} rows)", categories.iter().find(|c| &c.name == name).map_or(0, |c| c.vectors));
                client.batch_execute(&format!("CREATE INDEX ON {table} USING hnsw ({indexed} {operators}) WHERE category = {}", literal(name)))?;
            }
        }
        client.batch_execute(&format!("ANALYZE {table}"))?;
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        // One transaction: from its commit on every reader sees the new generation, with its
        // whitening (a leftover row of a re-index that died before it is replaced).
        let mut transaction = client.transaction()?;
        transaction.execute("DELETE FROM lookalike_whitening WHERE generation = $1", &[&(generation as i64)])?;
        if let Some(whitening) = &plan.whitening {
            transaction.execute("INSERT INTO lookalike_whitening (generation, bytes) VALUES ($1, $2)", &[&(generation as i64), &whitening.to_bytes()])?;
        }
        transaction.execute(
            "INSERT INTO lookalike_generations (generation, created_unix_s, key, catalogue, categories, hnsw, failed) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &(generation as i64),
                &created,
                &serde_json::to_string(job.key)?,
                &plan.catalogue.display().to_string(),
                &serde_json::to_string(&categories)?,
                &serde_json::to_string(&approximate)?,
                &serde_json::to_string(&plan.failed)?,
            ],
        )?;
        transaction.commit()?;
        collect_garbage(client);
        Ok(plan.written(generation, format!("{shown} (table {table})")))
    }
}

/// The newest generation's number, key, items in row order and text vectors by words, if
/// there is one.
type PreviousGeneration = (u64, EmbeddingKey, Vec<Item>, HashMap<String, Vec<f32>>);

fn previous_generation(client: &mut Client) -> anyhow::Result<Option<PreviousGeneration>> {
    let Some(Newest { number, key, .. }) = newest(client).context("cannot read the newest generation")? else { return Ok(None) };
    let key: EmbeddingKey = serde_json::from_str(&key).context("the newest generation's key is damaged")?;
    let table = items_table(number);
    let items: Vec<Item> = client.query(&format!("SELECT item FROM {table} ORDER BY row"), &[])?.iter().map(|row| serde_json::from_str(row.get::<_, &str>(0))).collect::<Result<_, _>>()?;
    // A generation written before items had words has no such columns: nothing to reuse then.
    let texts = match client.query(&format!("SELECT words, text_embedding FROM {table} WHERE text_embedding IS NOT NULL"), &[]) {
        Ok(rows) => rows.iter().map(|row| (row.get::<_, String>(0), row.get::<_, Vector>(1).to_vec())).collect(),
        Err(_) => HashMap::new(),
    };
    Ok(Some((number, key, items, texts)))
}

/// A vector as pgvector reads it from text: `[0.1,0.2]`.
fn vector_literal(vector: &Vector) -> String {
    let values: Vec<String> = vector.as_slice().iter().map(f32::to_string).collect();
    format!("[{}]", values.join(","))
}

/// Drops generations past the newest few, and tables of re-indexes that never finished.
fn collect_garbage(client: &mut Client) {
    let result = (|| -> Result<(), postgres::Error> {
        client.execute("DELETE FROM lookalike_generations WHERE generation <= (SELECT max(generation) FROM lookalike_generations) - $1", &[&KEEP_GENERATIONS])?;
        let kept: Vec<i64> = client.query("SELECT generation FROM lookalike_generations", &[])?.iter().map(|row| row.get(0)).collect();
        client.execute("DELETE FROM lookalike_whitening WHERE generation <> ALL($1)", &[&kept])?;
        for row in client.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'lookalike\\_items\\_%'", &[])? {
            let name: String = row.get(0);
            let number = name.trim_start_matches("lookalike_items_").parse::<i64>().ok();
            if number.is_some_and(|n| !kept.contains(&n)) {
                client.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))?;
            }
        }
        Ok(())
    })();
    if let Err(err) = result {
        tracing::warn!("cannot drop old index generations: {}", cause(&err));
    }
}
