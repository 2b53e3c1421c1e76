//! OpenCLIP's image-text model (ViT-B/32, `laion2b_s34b_b79k`, and any open_clip ViT of its
//! input size, context and vocabulary): an image tower and a text tower that put pictures and
//! sentences in one space.
//!
//! Both towers are one generic [`Transformer`] of residual attention blocks with names that
//! mirror open_clip's state dict, so the weights `lookalike models fetch clip` converts load by
//! name. Sizes are read from the weights file itself (widths, layers, patch, context); heads
//! are width / 64, as in every open_clip ViT config. Either tower loads alone: the vision side
//! embeds pictures, the text side sentences.
//!
//! - `tokenizer.rs`: the BPE tokenizer over the vocabulary open_clip's wheel ships.
//! - This file: the towers, loading, and where the files live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

mod int8;
mod tokenizer;

pub use tokenizer::{Tokenizer, CONTEXT};

/// The weights `models fetch clip` installs, relative to the models folder.
pub const WEIGHTS: &str = "clip/vit_b_32_laion2b.safetensors";
/// The BPE vocabulary the kit installs from open_clip's wheel, relative to the models folder.
pub const VOCABULARY: &str = "kit/clip/bpe_simple_vocab_16e6.txt.gz";
/// Width of the shared space (ViT-B/32's `embed_dim`); a weights file of another width is refused.
pub const DIM: usize = 512;
/// open_clip's head width in every ViT config: heads = width / 64.
const HEAD_WIDTH: i64 = 64;
/// CLIP's image normalisation (OpenAI's), on 0-1 RGB.
pub const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The line every caller prints when the weights are not there.
pub fn missing(models_dir: &Path) -> String {
    format!("the clip embedder's weights are not installed ({}): run `lookalike models fetch clip` (needs internet, 605 MB)", models_dir.join(WEIGHTS).display())
}

/// The installed weights, or the error that says how to install them.
pub fn weights(models_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = models_dir.join(WEIGHTS);
    anyhow::ensure!(path.exists(), "{}", missing(models_dir));
    Ok(path)
}

/// Sizes of both towers, read from a weights file's tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub image_width: i64,
    pub image_layers: i64,
    pub patch: i64,
    /// Patches per side.
    pub grid: i64,
    pub text_width: i64,
    pub text_layers: i64,
    pub vocabulary: i64,
    pub context: i64,
    pub embed: i64,
}

impl Shape {
    /// ViT-B/32 (open_clip's `ViT-B-32.json`).
    pub const VIT_B_32: Shape = Shape { image_width: 768, image_layers: 12, patch: 32, grid: 7, text_width: 512, text_layers: 12, vocabulary: 49408, context: 77, embed: 512 };

    /// The input side in pixels.
    pub fn image_size(&self) -> i64 {
        self.patch * self.grid
    }

    /// Reads the sizes from the header of a safetensors file (no tensor data is read), and
    /// refuses a file this port cannot run: another input size, context or vocabulary than the
    /// tokenizer's and the transform's, widths not in heads of 64, another shared width.
    pub fn of_file(path: &Path) -> anyhow::Result<Shape> {
        let shapes = header_shapes(path)?;
        let dim =
            |name: &str, at: usize| shapes.get(name).and_then(|dims| dims.get(at).copied()).with_context(|| format!("{} has no tensor {name} of that rank: not OpenCLIP ViT weights", path.display()));
        let layers = |prefix: &str| (0..).take_while(|n| shapes.contains_key(&format!("{prefix}.{n}.ln_1.weight"))).count() as i64;
        let positions = dim("visual.positional_embedding", 0)?;
        let grid = ((positions - 1).max(0) as f64).sqrt().round() as i64;
        let shape = Shape {
            image_width: dim("visual.conv1.weight", 0)?,
            image_layers: layers("visual.transformer.resblocks"),
            patch: dim("visual.conv1.weight", 2)?,
            grid,
            text_width: dim("token_embedding.weight", 1)?,
            text_layers: layers("transformer.resblocks"),
            vocabulary: dim("token_embedding.weight", 0)?,
            context: dim("positional_embedding", 0)?,
            embed: dim("text_projection", 1)?,
        };
        let fits = grid * grid + 1 == positions
            && shape.image_size() == Shape::VIT_B_32.image_size()
            && (shape.context, shape.vocabulary, shape.embed) == (CONTEXT as i64, Shape::VIT_B_32.vocabulary, DIM as i64)
            && shape.image_width % HEAD_WIDTH == 0
            && shape.text_width % HEAD_WIDTH == 0;
        anyhow::ensure!(fits, "{} is not a model this port runs ({shape:?}): it needs 224-pixel pictures, 77 tokens of open_clip's vocabulary and {DIM} dimensions, as ViT-B/32", path.display());
        Ok(shape)
    }
}

/// Tensor name -> shape, from a safetensors header.
fn header_shapes(path: &Path) -> anyhow::Result<HashMap<String, Vec<i64>>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).with_context(|| format!("{} is not a safetensors file: run `lookalike models fetch clip` again", path.display()))?;
    let length = u64::from_le_bytes(length);
    anyhow::ensure!(length < 100 << 20, "{} is not a safetensors file (header of {length} bytes): run `lookalike models fetch clip` again", path.display());
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header).with_context(|| format!("{} is cut short: run `lookalike models fetch clip` again", path.display()))?;
    let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).with_context(|| format!("{} has a damaged header: run `lookalike models fetch clip` again", path.display()))?;
    Ok(entries.into_iter().filter_map(|(name, entry)| Some((name, entry.get("shape")?.as_array()?.iter().map(|d| d.as_i64()).collect::<Option<Vec<i64>>>()?))).collect())
}

/// One residual attention block: pre-norm multi-head self-attention, then a GELU MLP of four
/// times the width.
struct Block {
    ln_1: nn::LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    ln_2: nn::LayerNorm,
    c_fc: nn::Linear,
    c_proj: nn::Linear,
    heads: i64,
    /// In, out, fc and proj in 8 bits, once [`Clip::quantise_image_tower`] made them.
    int8: Option<[int8::Int8Linear; 4]>,
}

fn layer_norm(p: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![width], nn::LayerNormConfig { eps: 1e-5, ..Default::default() })
}

impl Block {
    fn new(p: nn::Path, width: i64) -> Block {
        let attn = &p / "attn";
        let mlp = &p / "mlp";
        Block {
            ln_1: layer_norm(&p / "ln_1", width),
            in_proj_weight: attn.var("in_proj_weight", &[3 * width, width], nn::Init::Randn { mean: 0.0, stdev: (width as f64).powf(-0.5) }),
            in_proj_bias: attn.zeros("in_proj_bias", &[3 * width]),
            out_proj: nn::linear(&attn / "out_proj", width, width, Default::default()),
            ln_2: layer_norm(&p / "ln_2", width),
            c_fc: nn::linear(&mlp / "c_fc", width, 4 * width, Default::default()),
            c_proj: nn::linear(&mlp / "c_proj", 4 * width, width, Default::default()),
            heads: width / HEAD_WIDTH,
            int8: None,
        }
    }

    /// Makes the 8-bit layers and lets go of the f32 weights they replace (the caller drops
    /// the var store's references too).
    fn quantise(&mut self) -> anyhow::Result<()> {
        let linear = |l: &nn::Linear| int8::Int8Linear::new(&l.ws, l.bs.as_ref().expect("open_clip's linear layers have biases"));
        self.int8 = Some([int8::Int8Linear::new(&self.in_proj_weight, &self.in_proj_bias)?, linear(&self.out_proj)?, linear(&self.c_fc)?, linear(&self.c_proj)?]);
        for weight in [&mut self.in_proj_weight, &mut self.out_proj.ws, &mut self.c_fc.ws, &mut self.c_proj.ws] {
            *weight = Tensor::new();
        }
        Ok(())
    }

    /// Linear layer `n` (in, out, fc, proj), in 8 bits when quantised.
    fn dense(&self, n: usize, xs: &Tensor) -> Tensor {
        match (&self.int8, n) {
            (Some(layers), _) => layers[n].forward(xs),
            (None, 0) => xs.linear(&self.in_proj_weight, Some(&self.in_proj_bias)),
            (None, _) => xs.apply([&self.out_proj, &self.c_fc, &self.c_proj][n - 1]),
        }
    }

    /// (N, L, width) -> (N, L, width); `mask` (L, L) is added to the attention logits.
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Tensor {
        let (n, length, width) = xs.size3().expect("(N, L, width)");
        let split = |t: &Tensor| t.view([n, length, self.heads, width / self.heads]).transpose(1, 2);
        let qkv = self.dense(0, &self.ln_1.forward(xs)).chunk(3, -1);
        // tch 0.17 passes an absent mask to libtorch as an undefined tensor, which it refuses:
        // the mask is always given (zeros for the image tower).
        let attended = Tensor::scaled_dot_product_attention(&split(&qkv[0]), &split(&qkv[1]), &split(&qkv[2]), Some(mask), 0.0, false, None);
        let xs = xs + self.dense(1, &attended.transpose(1, 2).reshape([n, length, width]));
        let hidden = self.dense(3, &self.dense(2, &self.ln_2.forward(&xs)).gelu("none"));
        xs + hidden
    }
}

/// The blocks of one tower, under `resblocks.N`.
struct Transformer {
    blocks: Vec<Block>,
}

impl Transformer {
    fn new(p: nn::Path, width: i64, layers: i64) -> Transformer {
        Transformer { blocks: (0..layers).map(|n| Block::new(&p / "resblocks" / n, width)).collect() }
    }

    /// `causal`: each position attends only to itself and those before it.
    fn forward(&self, xs: Tensor, causal: bool) -> Tensor {
        let length = xs.size()[1];
        let zeros = Tensor::zeros([length, length], (xs.kind(), xs.device()));
        let mask = if causal { zeros.fill(f64::NEG_INFINITY).triu(1) } else { zeros };
        self.blocks.iter().fold(xs, |acc, block| block.forward(&acc, &mask))
    }
}

/// The image tower: 32 x 32 patches embedded by a convolution, a class token, positions, the
/// transformer, and the class token's output projected into the shared space.
struct Vision {
    conv1: nn::Conv2D,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: nn::LayerNorm,
    transformer: Transformer,
    ln_post: nn::LayerNorm,
    proj: Tensor,
}

impl Vision {
    fn new(p: nn::Path, shape: &Shape) -> Vision {
        let width = shape.image_width;
        let scale = nn::Init::Randn { mean: 0.0, stdev: (width as f64).powf(-0.5) };
        Vision {
            conv1: nn::conv2d(&p / "conv1", 3, width, shape.patch, nn::ConvConfig { stride: shape.patch, bias: false, ..Default::default() }),
            class_embedding: p.var("class_embedding", &[width], scale),
            positional_embedding: p.var("positional_embedding", &[shape.grid * shape.grid + 1, width], scale),
            ln_pre: layer_norm(&p / "ln_pre", width),
            transformer: Transformer::new(&p / "transformer", width, shape.image_layers),
            ln_post: layer_norm(&p / "ln_post", width),
            proj: p.var("proj", &[width, shape.embed], scale),
        }
    }

    /// (N, 3, size, size) normalised pixels -> (N, embed), not normalised.
    fn forward(&self, pixels: &Tensor) -> Tensor {
        let patches = pixels.apply(&self.conv1).flatten(2, 3).transpose(1, 2);
        let n = patches.size()[0];
        let class = self.class_embedding.view([1, 1, -1]).expand([n, 1, -1], false);
        let tokens = Tensor::cat(&[class, patches], 1) + &self.positional_embedding;
        let encoded = self.ln_post.forward(&self.transformer.forward(self.ln_pre.forward(&tokens), false));
        encoded.select(1, 0).matmul(&self.proj)
    }
}

/// The text tower: token and position embeddings, the causal transformer, and the output at the
/// end token (the largest id) projected into the shared space.
struct Text {
    token_embedding: nn::Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: nn::LayerNorm,
    text_projection: Tensor,
}

impl Text {
    fn new(p: nn::Path, shape: &Shape) -> Text {
        let width = shape.text_width;
        Text {
            token_embedding: nn::embedding(&p / "token_embedding", shape.vocabulary, width, Default::default()),
            positional_embedding: p.var("positional_embedding", &[shape.context, width], nn::Init::Randn { mean: 0.0, stdev: 0.01 }),
            transformer: Transformer::new(&p / "transformer", width, shape.text_layers),
            ln_final: layer_norm(&p / "ln_final", width),
            text_projection: p.var("text_projection", &[width, shape.embed], nn::Init::Randn { mean: 0.0, stdev: (width as f64).powf(-0.5) }),
        }
    }

    /// (N, context) ids -> (N, embed), not normalised. Attention is causal, so what comes after
    /// the last end token changes nothing the output reads: only the positions up to it run
    /// (a shopper's sentence of 10 tokens costs 12 positions, not 77; the same numbers).
    fn forward(&self, tokens: &Tensor) -> Tensor {
        let ends = tokens.argmax(-1, false);
        let length = ends.max().int64_value(&[]) + 1;
        let tokens = tokens.narrow(1, 0, length);
        let xs = self.token_embedding.forward(&tokens) + self.positional_embedding.narrow(0, 0, length);
        let encoded = self.ln_final.forward(&self.transformer.forward(xs, true));
        let rows = Tensor::arange(tokens.size()[0], (Kind::Int64, tokens.device()));
        encoded.index(&[Some(rows), Some(ends)]).matmul(&self.text_projection)
    }
}

/// Which towers to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towers {
    Image,
    Text,
    Both,
}

/// A loaded CLIP model (one tower or both); lives on the model thread.
pub struct Clip {
    vars: nn::VarStore,
    vision: Option<Vision>,
    text: Option<Text>,
    tokenizer: Option<Tokenizer>,
    pub shape: Shape,
}

impl Clip {
    /// The towers of `shape` with random weights (tests and timings); sentences need `tokenizer` too.
    pub fn untrained(shape: Shape, towers: Towers, tokenizer: Option<Tokenizer>, device: Device) -> Clip {
        let vars = nn::VarStore::new(device);
        let root = vars.root();
        let vision = (towers != Towers::Text).then(|| Vision::new(&root / "visual", &shape));
        let text = (towers != Towers::Image).then(|| Text::new(root.clone(), &shape));
        // Part of the state dict; the clip method calibrates its own temperature instead.
        let _ = root.var("logit_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln()));
        Clip { vars, vision, text, tokenizer, shape }
    }

    /// Loads `towers` from `weights` (a converted open_clip state dict) and, for the text
    /// tower, the vocabulary.
    pub fn load(weights: &Path, vocabulary: Option<&Path>, towers: Towers, device: Device) -> anyhow::Result<Clip> {
        let shape = Shape::of_file(weights)?;
        let tokenizer = match towers {
            Towers::Image => None,
            _ => Some(Tokenizer::load(vocabulary.context("the text tower needs the vocabulary")?)?),
        };
        let mut clip = Clip::untrained(shape, towers, tokenizer, device);
        clip.vars.load(weights).with_context(|| format!("cannot load {} (damaged? `lookalike models fetch clip` installs it again)", weights.display()))?;
        for (_, tensor) in clip.vars.variables() {
            let _ = tensor.set_requires_grad(false);
        }
        Ok(clip)
    }

    /// The image tower's linear layers in 8 bits (`models.clip_int8`), on the CPU only (FBGEMM);
    /// elsewhere it stays as it is. Their f32 weights are let go: ViT-B/32's 85 million of them
    /// (340 MB) become 170 MB of 8-bit ones (FBGEMM keeps them packed and plain).
    pub fn quantise_image_tower(&mut self) -> anyhow::Result<()> {
        let Some(vision) = (self.vars.device() == Device::Cpu).then_some(self.vision.as_mut()).flatten() else { return Ok(()) };
        tch::no_grad(|| vision.transformer.blocks.iter_mut().try_for_each(Block::quantise))?;
        let replaced = |name: &str| name.starts_with("visual.transformer.") && ["attn.in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight"].iter().any(|end| name.ends_with(end));
        let mut variables = self.vars.variables_.lock().expect("the var store's lock");
        let gone: std::collections::HashSet<usize> = variables.named_variables.iter().filter(|(name, _)| replaced(name)).map(|(_, tensor)| tensor.data_ptr() as usize).collect();
        variables.named_variables.retain(|name, _| !replaced(name));
        variables.trainable_variables.retain(|var| !gone.contains(&(var.tensor.data_ptr() as usize)));
        Ok(())
    }

    /// Saves every tower built (tests make small models this way).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::files::replace_atomically(path, |part| self.vars.save(part).with_context(|| format!("cannot write {}", part.display())))
    }

    pub fn device(&self) -> Device {
        self.vars.device()
    }

    /// Unit vectors of (N, 3, size, size) pixels normalised by [`MEAN`] and [`STD`].
    pub fn embed_pixels(&self, pixels: &Tensor) -> anyhow::Result<Tensor> {
        let vision = self.vision.as_ref().context("the image tower is not loaded")?;
        Ok(tch::no_grad(|| normalised(&vision.forward(&pixels.to_device(self.device())))))
    }

    /// Unit vectors of `texts`, in order.
    pub fn embed_texts(&self, texts: &[String]) -> anyhow::Result<Tensor> {
        let (Some(text), Some(tokenizer)) = (&self.text, &self.tokenizer) else { anyhow::bail!("the text tower or its tokenizer is not loaded") };
        if texts.is_empty() {
            return Ok(Tensor::zeros([0, self.shape.embed], (Kind::Float, self.device())));
        }
        let rows: Vec<i64> = texts.iter().flat_map(|t| tokenizer.context(t)).collect();
        let tokens = Tensor::from_slice(&rows).view([texts.len() as i64, CONTEXT as i64]).to_device(self.device());
        Ok(tch::no_grad(|| normalised(&text.forward(&tokens))))
    }
}

fn normalised(xs: &Tensor) -> Tensor {
    let norm = xs.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
    (xs / norm).to_kind(Kind::Float)
}

/// Rows of a (N, D) float tensor as vectors.
pub fn rows(xs: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
    let xs = xs.to_device(Device::Cpu).contiguous();
    let dim = xs.size().get(1).copied().unwrap_or(0) as usize;
    let flat = Vec::<f32>::try_from(xs.flatten(0, -1)).context("libtorch gave back no clip vectors")?;
    Ok(flat.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Shape {
        Shape { image_width: 128, image_layers: 2, patch: 32, grid: 7, text_width: 64, text_layers: 2, vocabulary: 49408, context: 77, embed: 512 }
    }

    #[test]
    fn the_shape_is_read_back_from_a_saved_model_and_a_half_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (both, image) = (dir.path().join("both.safetensors"), dir.path().join("image.safetensors"));
        Clip::untrained(tiny(), Towers::Both, None, Device::Cpu).save(&both).unwrap();
        assert_eq!(Shape::of_file(&both).unwrap(), tiny());
        Clip::untrained(tiny(), Towers::Image, None, Device::Cpu).save(&image).unwrap();
        // A damaged file is an error that names it, never a panic.
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &std::fs::read(&both).unwrap()[..100]).unwrap();
        std::fs::write(dir.path().join("junk.safetensors"), [0xffu8; 64]).unwrap();
        for damaged in [cut, dir.path().join("junk.safetensors")] {
            assert!(Shape::of_file(&damaged).unwrap_err().to_string().contains("run `lookalike models fetch clip` again"), "{}", damaged.display());
        }
        let refused = Shape::of_file(&image).unwrap_err().to_string();
        assert!(refused.contains("token_embedding"), "a file without the text tower is refused by name: {refused}");
        assert!(Clip::load(&both, None, Towers::Text, Device::Cpu).err().unwrap().to_string().contains("vocabulary"));
        // Another input size (ViT-B-32-256's 8 x 8 patches) is refused at load, not at the first picture.
        let other = dir.path().join("256.safetensors");
        Clip::untrained(Shape { grid: 8, ..tiny() }, Towers::Both, None, Device::Cpu).save(&other).unwrap();
        assert!(Shape::of_file(&other).unwrap_err().to_string().contains("224-pixel pictures"));
        assert_eq!(Clip::untrained(tiny(), Towers::Text, None, Device::Cpu).embed_texts(&[]).unwrap_err().to_string(), "the text tower or its tokenizer is not loaded");
    }

    #[test]
    fn an_image_batch_embeds_each_picture_as_it_would_alone() {
        tch::manual_seed(3);
        let clip = Clip::untrained(tiny(), Towers::Image, None, Device::Cpu);
        let pixels = Tensor::randn([3, 3, 224, 224], (Kind::Float, Device::Cpu));
        let batch = clip.embed_pixels(&pixels).unwrap();
        assert_eq!(batch.size(), [3, 512]);
        let alone = clip.embed_pixels(&pixels.narrow(0, 1, 1)).unwrap();
        assert!(batch.narrow(0, 1, 1).allclose(&alone, 1e-5, 1e-5, false));
        let norms = batch.norm_scalaropt_dim(2, [-1], false);
        assert!(norms.allclose(&Tensor::ones([3], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false), "unit vectors");
        // In 8 bits: close to f32, not equal to it.
        let mut clip = clip;
        let before = clip.vars.variables().len();
        clip.quantise_image_tower().unwrap();
        assert_eq!(clip.vars.variables().len(), before - 4 * 2, "the f32 weights the 8-bit layers replace are let go");
        let int8 = clip.embed_pixels(&pixels).unwrap();
        let cosine = (&int8 * &batch).sum_dim_intlist([-1].as_slice(), false, Kind::Float).min().double_value(&[]);
        assert!(cosine > 0.999 && cosine < 1.0 - 1e-7, "{cosine}");
    }

    #[test]
    fn a_sentence_embeds_alike_alone_and_beside_a_longer_one() {
        tch::manual_seed(5);
        let vocabulary = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(VOCABULARY);
        let clip = Clip::untrained(tiny(), Towers::Text, Some(Tokenizer::load(&vocabulary).unwrap()), Device::Cpu);
        let short = "a red tote".to_string();
        let long = "a very long sentence about a wooden bed frame with drawers, slats and a tall headboard ".repeat(3);
        let alone = clip.embed_texts(std::slice::from_ref(&short)).unwrap();
        let beside = clip.embed_texts(&[long, short]).unwrap();
        // Alone, only its 5 positions run; beside the long one, all 77 (causal: the same).
        assert!(beside.narrow(0, 1, 1).allclose(&alone, 1e-5, 1e-6, false));
    }
}
