//! The `lookalike` binary end to end: help, config errors, `models list` on the installed kit,
//! and `models fetch chapter` / `models fetch clip` against loopback servers (never the internet).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{heavy, Heavy};

fn lookalike(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lookalike"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("LOOKALIKE_FETCH_MIRROR");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the lookalike binary runs")
}

/// This module's turn ([`heavy`]), for a test whose commands hash the kit, load the text models
/// or run python with torch; the others are light and run beside any test.
fn heavy_commands() -> Heavy {
    heavy(module_path!())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A models folder holding only a manifest, so fetch tests never write into the repository.
fn scratch_models(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
    std::fs::copy(repo_models().join("setup.py"), dir.path().join("setup.py")).unwrap();
    dir
}

/// Answers every request with `body`, for as long as the test runs; returns the origin.
fn serve_bytes(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(header.as_bytes()).and_then(|_| stream.write_all(&body));
        }
    });
    origin
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            found.extend(files_under(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn help_teaches_every_subcommand_and_the_overrides() {
    let output = lookalike(&["--help"], &[]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    for command in ["models", "train", "index", "search", "eval", "intent", "serve", "demo", "bench", "feedback"] {
        assert!(help.contains(&format!("\n  {command} ")), "--help lacks `{command}`:\n{help}");
    }
    assert!(help.contains("LOOKALIKE__SECTION__KEY") && help.contains("Examples:"), "{help}");
}

#[test]
fn subcommands_parse_their_arguments() {
    let missing = lookalike(&["search"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("<--image <FILE>|--text <TEXT>>"), "a photo, words, or both: {}", text(&missing.stderr));

    let bad_number = lookalike(&["train", "--data", "x", "--epochs", "many"], &[]);
    assert_eq!(bad_number.status.code(), Some(2));
    assert!(text(&bad_number.stderr).contains("--epochs"), "{}", text(&bad_number.stderr));

    let bad_profile = lookalike(&["models", "fetch", "imagenet"], &[]);
    assert!(text(&bad_profile.stderr).contains("possible values: kit, chapter"), "{}", text(&bad_profile.stderr));
}

#[test]
fn search_and_index_explain_what_is_missing() {
    let missing_image = lookalike(&["search", "--image", "no-such-photo.jpg"], &[]);
    assert_eq!(missing_image.status.code(), Some(1));
    assert!(text(&missing_image.stderr).contains("cannot use the query image no-such-photo.jpg"), "{}", text(&missing_image.stderr));
    let scratch = tempfile::tempdir().unwrap();
    let heads = scratch.path().join("no-heads");
    let no_heads = lookalike(&["index"], &[("LOOKALIKE__MODELS__HEADS_DIR", heads.to_str().unwrap())]);
    assert_eq!(no_heads.status.code(), Some(1));
    assert!(text(&no_heads.stderr).contains("train the heads first"), "{}", text(&no_heads.stderr));
}

#[test]
fn a_wrong_config_key_stops_start_up_with_the_key_and_the_accepted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let default = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lookalike.toml")).unwrap();
    std::fs::write(&config, default.replace("default_k =", "defualt_k =")).unwrap();
    let output = lookalike(&["--config", config.to_str().unwrap(), "models", "list"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("unknown field `defualt_k`") && stderr.contains("`default_k`"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "the error should name the file: {stderr}");

    let output = lookalike(&["models", "list"], &[("LOOKALIKE__MODELS__PROFILE", "imagenet")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("LOOKALIKE__MODELS__PROFILE") && stderr.contains("`kit` or `chapter`"), "{stderr}");
}

#[test]
fn models_list_verifies_every_installed_kit_file() {
    let _turn = heavy_commands();
    let output = lookalike(&["models", "list", "--profile", "kit", "--json"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 8, "kit: three backbones, MiniLM, the CLIP vocabulary, Fashion-MNIST, sample photos, ImageNet class names");
    for row in rows {
        for file in row["files"].as_array().unwrap() {
            assert_eq!(file[1]["state"], "verified", "{} not installed intact (run `make setup`): {file}", row["id"]);
        }
    }
}

#[test]
fn models_list_reports_damaged_and_missing_files_with_the_fix() {
    let _turn = heavy_commands();
    let dir = scratch_models(&std::fs::read_to_string(repo_models().join("manifest.toml")).unwrap());
    std::fs::create_dir_all(dir.path().join("kit/all-MiniLM-L6-v2/1_Pooling")).unwrap();
    for entry in ["efficientnet_lite0.safetensors", "squeezenet1_1.safetensors", "all-MiniLM-L6-v2/vocab.txt"] {
        std::os::unix::fs::symlink(repo_models().join("kit").join(entry), dir.path().join("kit").join(entry)).unwrap();
    }
    std::fs::write(dir.path().join("kit/all-MiniLM-L6-v2/config.json"), b"{}").unwrap();
    let output = lookalike(&["models", "list"], &[("LOOKALIKE__MODELS__DIR", dir.path().to_str().unwrap())]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    let line = |id: &str| table.lines().find(|l| l.contains(id)).unwrap_or_default().to_string();
    assert!(line("efficientnet_lite0").contains("installed"), "{table}");
    assert!(line("all_minilm_l6_v2").contains("DAMAGED"), "{table}");
    assert!(line("inception_v3_mixed5").contains("missing"), "{table}");
    assert!(line("vgg16").contains("missing"), "{table}");
    assert!(table.contains("config.json has sha256 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"), "{table}");
    assert!(table.contains("make setup") && table.contains("lookalike models fetch chapter"), "{table}");
    assert!(line("clip_vit_b32_laion2b").contains("missing") && table.contains("lookalike models fetch clip"), "{table}");
}

#[test]
fn fetch_chapter_without_internet_fails_fast_and_says_what_to_do() {
    let _turn = heavy_commands();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = scratch_models(&std::fs::read_to_string(repo_models().join("manifest.toml")).unwrap());
    let started = std::time::Instant::now();
    let output = lookalike(&["models", "fetch", "chapter"], &[("LOOKALIKE__MODELS__DIR", dir.path().to_str().unwrap()), ("LOOKALIKE_FETCH_MIRROR", &origin)]);
    assert!(started.elapsed().as_secs() < 20, "should fail fast, took {:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot download") && stderr.contains("no internet"), "{stderr}");
    assert!(stderr.contains("offline kit") && stderr.contains("make setup"), "{stderr}");
    let cache = dir.path().join("cache/vgg16/vgg16-397923af.pth");
    assert!(stderr.contains(&cache.display().to_string()), "the hand-copy path should be named: {stderr}");
    let left: Vec<_> = files_under(dir.path()).into_iter().filter(|p| !p.ends_with("manifest.toml") && !p.ends_with("setup.py")).collect();
    assert!(left.is_empty(), "nothing may be left behind: {left:?}");
}

#[test]
fn fetch_chapter_deletes_a_download_with_the_wrong_hash() {
    let _turn = heavy_commands();
    let origin = serve_bytes(b"this is not vgg16".to_vec());
    let dir = scratch_models(&std::fs::read_to_string(repo_models().join("manifest.toml")).unwrap());
    let output = lookalike(&["models", "fetch", "chapter"], &[("LOOKALIKE__MODELS__DIR", dir.path().to_str().unwrap()), ("LOOKALIKE_FETCH_MIRROR", &origin)]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("expected 397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0") && stderr.contains("deleted"), "{stderr}");
    assert!(!dir.path().join("chapter").exists(), "no model file may be written");
    let left: Vec<_> = files_under(&dir.path().join("cache"));
    assert!(left.is_empty(), "the bad download must be gone: {left:?}");
}

#[test]
fn fetch_chapter_and_clip_download_check_and_convert_to_safetensors() {
    let _turn = heavy_commands();
    for bundle in ["chapter", "clip"] {
        fetch_one(bundle);
    }
}

/// `models fetch <bundle>` of a one-layer model served on loopback.
fn fetch_one(bundle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("tiny.pth");
    let made = Command::new("python3")
        .args(["-c", "import sys, torch; torch.save({'fc.weight': torch.arange(6.).reshape(2, 3).t(), 'fc.bias': torch.ones(3)}, sys.argv[1])"])
        .arg(&checkpoint)
        .status()
        .unwrap();
    assert!(made.success(), "python3 with torch is needed (make setup installs it)");
    let bytes = std::fs::read(&checkpoint).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let origin = serve_bytes(bytes);
    let manifest = format!(
        r#"[[model]]
id = "tiny"
profile = "{bundle}"
role = "backbone"
architecture = "one linear layer"
licence = "none"
input = "3"
preprocessing = "none"
source = {{ kind = "url", package = "test", version = "0", artefact = "tiny-{prefix}.pth", sha256 = "{sha}", member = "" }}
files = [ {{ path = "{bundle}/tiny.safetensors", sha256 = "", url = "https://example.invalid/models/tiny-{prefix}.pth", url_sha256_prefix = "{prefix}", convert = "torch-pickle" }} ]
"#,
        prefix = &sha[..8]
    );
    let models = scratch_models(&manifest);
    let env = [("LOOKALIKE__MODELS__DIR", models.path().to_str().unwrap()), ("LOOKALIKE_FETCH_MIRROR", origin.as_str())];
    let output = lookalike(&["models", "fetch", bundle], &env);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let installed = models.path().join(format!("{bundle}/tiny.safetensors"));
    let data = std::fs::read(&installed).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&data).unwrap();
    let weight = tensors.tensor("fc.weight").unwrap();
    assert_eq!(weight.shape(), &[3, 2]);
    let values: Vec<f32> = weight.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0], "a transposed view must be stored in its logical layout");
    assert!(models.path().join(format!("{bundle}/tiny.safetensors.sha256")).exists(), "the installed hash is recorded");

    let listed = lookalike(&["models", "list", "--json"], &env);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["files"][0][1]["state"], "verified", "{rows}");

    let again = lookalike(&["models", "fetch", bundle], &env);
    assert!(text(&again.stdout).contains(&format!("every {bundle} model is installed")), "{}", text(&again.stdout));
}

#[test]
fn serve_demands_the_token_from_the_environment_and_never_echoes_it() {
    let output = lookalike(&["serve"], &[("DISCORD_TOKEN", "")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("DISCORD_TOKEN is not set"), "{}", text(&output.stderr));

    // Or from a file (a secrets mount): an empty or missing one is named, with the fix.
    let scratch = tempfile::tempdir().unwrap();
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, "\n").unwrap();
    let output = lookalike(&["serve"], &[("DISCORD_TOKEN", ""), ("DISCORD_TOKEN_FILE", token_file.to_str().unwrap())]);
    assert!(output.status.code() == Some(1) && text(&output.stderr).contains("is empty: write the bot token into it"), "{}", text(&output.stderr));
    let output = lookalike(&["serve"], &[("DISCORD_TOKEN", ""), ("DISCORD_TOKEN_FILE", "/nonexistent/token")]);
    assert!(text(&output.stderr).contains("cannot read DISCORD_TOKEN_FILE /nonexistent/token"), "{}", text(&output.stderr));

    // With the token set, start-up goes on to the models (none here) and fails without it.
    std::fs::write(&token_file, "secret-token-value\n").unwrap();
    for token in [("DISCORD_TOKEN", "secret-token-value"), ("DISCORD_TOKEN_FILE", token_file.to_str().unwrap())] {
        let output = lookalike(&["serve"], &[token, ("LOOKALIKE__MODELS__HEADS_DIR", "/nonexistent/heads"), ("LOOKALIKE__SERVE__METRICS_ADDR", "127.0.0.1:0")]);
        assert_eq!(output.status.code(), Some(1));
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(!all.contains("secret-token-value") && all.contains("heads"), "{all}");
    }
}

#[test]
fn intent_answers_as_json_with_the_method_that_decided() {
    let _turn = heavy_commands();
    let output = lookalike(&["intent", "not a dress, a coat like this", "--json"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let intent: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(intent["category"], "coat");
    assert_eq!(intent["decided_by"], "lexical");
    assert_eq!(intent["negated"], serde_json::json!(["dress"]));

    let output = lookalike(&["intent", "cheaper please"], &[]);
    assert!(text(&output.stdout).contains("category: none named"), "{}", text(&output.stdout));

    let output = lookalike(&["intent"], &[]);
    assert_eq!(output.status.code(), Some(2), "a sentence or --eval is required");
}

#[test]
fn train_and_eval_explain_what_is_missing() {
    let output = lookalike(&["train", "--data", "no/such/folder"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("no/such/folder") && text(&output.stderr).contains("one sub-folder per category"), "{}", text(&output.stderr));

    let empty = tempfile::tempdir().unwrap();
    let output = lookalike(&["eval", "--data", "x"], &[("LOOKALIKE__MODELS__HEADS_DIR", empty.path().to_str().unwrap())]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("train the heads first"), "{}", text(&output.stderr));
}

#[test]
fn search_refuses_a_bad_image_before_loading_any_model() {
    // No heads anywhere: had the models been loaded first, the error would be about them.
    let scratch = tempfile::tempdir().unwrap();
    let heads = ("LOOKALIKE__MODELS__HEADS_DIR", scratch.path().to_str().unwrap());
    let empty = scratch.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let output = lookalike(&["search", "--image", empty.to_str().unwrap()], &[heads]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("the file is empty") && !text(&output.stderr).contains("heads"), "{}", text(&output.stderr));

    let huge = scratch.path().join("huge.jpg");
    std::fs::File::create(&huge).unwrap().set_len(4 << 30).unwrap();
    let output = lookalike(&["search", "--image", huge.to_str().unwrap()], &[heads]);
    assert!(text(&output.stderr).contains("the image is 4096 MB; the limit is 8 MB"), "{}", text(&output.stderr));
}

#[test]
fn feedback_lists_corrections_with_their_trust_and_exports_the_trusted_ones() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("feedback");
    let env = [("LOOKALIKE__FEEDBACK__DIR", dir.to_str().unwrap())];
    let empty = lookalike(&["feedback", "list"], &env);
    assert!(empty.status.success() && text(&empty.stdout).contains("no corrections yet"), "{}", text(&empty.stderr));

    let config = lookalike::config::FeedbackConfig { dir: dir.clone(), max_corrections: 100, min_agreeing_users: 3 };
    let store = lookalike::feedback::FeedbackStore::open(&config);
    let photo = |n: u8| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(4, 4, image::Rgb([n, 9, 9])).write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    };
    store.record(&photo(1), &["coat".into()], "shirt", 11, false).unwrap();
    store.record(&photo(2), &["coat".into()], "pullover", 12, true).unwrap();
    let list = lookalike(&["feedback", "list"], &env);
    let out = text(&list.stdout);
    assert!(out.contains("2 corrections of 2 photos") && out.contains("waiting: 1 of 3 shoppers") && out.contains("trusted: a moderator picked it"), "{out}");
    let json: serde_json::Value = serde_json::from_slice(&lookalike(&["feedback", "list", "--json"], &env).stdout).unwrap();
    assert_eq!(json["corrections"].as_array().unwrap().len(), 2);

    let export = scratch.path().join("export");
    let exported = lookalike(&["feedback", "export", export.to_str().unwrap()], &env);
    assert!(text(&exported.stdout).contains("1 trusted photos written"), "{}", text(&exported.stderr));
    assert_eq!(files_under(&export).len(), 1);
    assert!(files_under(&export)[0].starts_with(export.join("pullover")));
}

#[test]
fn catalogue_log_prints_the_newest_edits_with_who_and_when() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("audit.jsonl");
    let env = [("LOOKALIKE__CATALOGUE__AUDIT_LOG", path.to_str().unwrap())];
    assert!(text(&lookalike(&["catalogue", "log"], &env).stdout).is_empty(), "no log yet: nothing to show");
    let log = lookalike::audit::AuditLog::open(&path);
    let moderator = lookalike::audit::Who::Discord { user: 42, name: "mod".into() };
    for n in 0..3 {
        log.record(moderator.clone(), lookalike::audit::Action::Added { item: format!("bag/{n}.png"), category: "bag".into() }).unwrap();
    }
    let out = lookalike(&["catalogue", "log", "-n", "2"], &env);
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].ends_with("mod (Discord 42)  added bag/2.png") && lines[1].starts_with("20"), "{lines:?}");
    let json: serde_json::Value = serde_json::from_str(text(&lookalike(&["catalogue", "log", "--json", "-n", "1"], &env).stdout).trim()).unwrap();
    assert_eq!((json["action"].as_str(), json["item"].as_str(), json["who"]["discord"]["user"].as_u64()), (Some("added"), Some("bag/2.png"), Some(42)));
}

#[test]
fn categories_explain_shows_each_words_source_and_honours_exclude() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("categories.toml");
    let categories = "[[category]]\nname = \"wardrobe\"\ndescription = \"a tall cupboard for hanging clothes\"\nexclude = [\"coat closet\"]\n\n[[category]]\nname = \"table\"\ndescription = \"a table for eating\"\n\n[[category]]\nname = \"desk\"\ndescription = \"a desk to work at\"\n";
    std::fs::write(&file, categories).unwrap();
    let env = [("LOOKALIKE__TEXT__VOCABULARY", file.to_str().unwrap())];
    let out = lookalike(&["categories", "--explain"], &env);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let wardrobe = shown.split("\ntable").next().unwrap();
    assert!(
        wardrobe.contains("WordNet synonyms: closet") && wardrobe.contains("armoire") && !wardrobe.contains("coat closet,") && wardrobe.contains("excluded (exclude = [...]): coat closet"),
        "{shown}"
    );
    // The embedding method's lines: an armoire's definition, not the excluded coat closet's.
    assert!(wardrobe.contains("definitions") && wardrobe.contains("a large wardrobe or cabinet") && !wardrobe.contains("outerwear"), "{shown}");
    let table = shown.split("\ntable").nth(1).unwrap().split("\ndesk").next().unwrap();
    assert!(table.contains("a piece of furniture") && table.contains("coffee table") && !table.contains("writing desk"), "the furniture sense; desks stay the desk's: {shown}");
    let json: serde_json::Value = serde_json::from_slice(&lookalike(&["categories", "--json"], &env).stdout).unwrap();
    assert_eq!(json[0]["name"], "wardrobe");
    assert!(json[0]["terms"].as_array().unwrap().iter().any(|t| t["phrase"] == "closet" && t["source"] == "synonym"), "{json}");
    let off = lookalike(&["categories", "--explain"], &[env[0], ("LOOKALIKE__TEXT__WORDNET_DIR", "")]);
    assert!(text(&off.stdout).contains("WordNet off"), "{}", text(&off.stdout));
}
