//! The six backbone networks, built as small functions under an `nn::Path` whose names mirror
//! the published state dicts (torchvision, lukemelas EfficientNet, Keras numbering for the
//! nsfwjs InceptionV3), so weights load by name. Inference only: batch norm uses running
//! statistics and dropout is off.
//!
//! Each network returns its pooled features and, where the weights include the ImageNet
//! classifier, the 1000 logits.

use tch::nn::{self, Module};
use tch::Tensor;

type Layer = Box<dyn Fn(&Tensor) -> Tensor + Send>;

/// A built network: stages run one after another on images (N, 3, H, W) up to the last feature
/// map, then `finish` pools it into features and logits. Tuning runs the stages in two parts:
/// the frozen ones once per image (their maps cached), the last ones with gradients.
pub struct Net {
    stages: Vec<Layer>,
    finish: Box<dyn Fn(Tensor) -> super::Outputs + Send>,
}

impl Net {
    fn new(stages: Vec<Layer>, finish: impl Fn(Tensor) -> super::Outputs + Send + 'static) -> Net {
        Net { stages, finish: Box::new(finish) }
    }

    pub fn forward(&self, xs: &Tensor) -> super::Outputs {
        self.rest(&self.prefix(xs, self.stages.len()), self.stages.len())
    }

    /// The map after the first `stages` stages.
    pub fn prefix(&self, xs: &Tensor, stages: usize) -> Tensor {
        self.stages[..stages.min(self.stages.len())].iter().fold(xs.shallow_clone(), |acc, stage| stage(&acc))
    }

    /// The network's outputs from the map after the first `stages` stages.
    pub fn rest(&self, map: &Tensor, stages: usize) -> super::Outputs {
        (self.finish)(self.stages[stages.min(self.stages.len())..].iter().fold(map.shallow_clone(), |acc, stage| stage(&acc)))
    }

    pub fn stages(&self) -> usize {
        self.stages.len()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    None,
    Relu,
    Relu6,
}

fn activate(xs: Tensor, act: Act) -> Tensor {
    match act {
        Act::None => xs,
        Act::Relu => xs.relu(),
        Act::Relu6 => xs.clamp(0.0, 6.0),
    }
}

/// How a convolution pads.
#[derive(Clone, Copy, Debug)]
enum Pad {
    /// Symmetric, fixed: torchvision's `padding=(h, w)`.
    Fixed(i64, i64),
    /// TensorFlow "same": output = ceil(input / stride), extra padding at the bottom/right.
    TfSame,
}

/// Batch norm from running statistics. Keras layers built with `scale=False` have no weight.
fn batch_norm(p: &nn::Path, channels: i64, eps: f64, has_weight: bool) -> Layer {
    let zeros = nn::Init::Const(0.0);
    let mean = p.var("running_mean", &[channels], zeros);
    let var = p.var("running_var", &[channels], nn::Init::Const(1.0));
    let bias = p.var("bias", &[channels], zeros);
    let weight = has_weight.then(|| p.var("weight", &[channels], nn::Init::Const(1.0)));
    Box::new(move |xs: &Tensor| Tensor::batch_norm(xs, weight.as_ref(), Some(&bias), Some(&mean), Some(&var), false, 0.1, eps, false))
}

struct Conv {
    c_in: i64,
    c_out: i64,
    kernel: [i64; 2],
    stride: i64,
    pad: Pad,
    groups: i64,
    bias: bool,
}

impl Conv {
    fn new(c_in: i64, c_out: i64, kernel: i64) -> Conv {
        Conv { c_in, c_out, kernel: [kernel, kernel], stride: 1, pad: Pad::Fixed(kernel / 2, kernel / 2), groups: 1, bias: false }
    }
    fn kernel(mut self, h: i64, w: i64) -> Conv {
        self.kernel = [h, w];
        self.pad = Pad::Fixed(h / 2, w / 2);
        self
    }
    fn stride(mut self, stride: i64) -> Conv {
        self.stride = stride;
        self
    }
    fn pad(mut self, pad: Pad) -> Conv {
        self.pad = pad;
        self
    }
    fn valid(self) -> Conv {
        self.pad(Pad::Fixed(0, 0))
    }
    fn groups(mut self, groups: i64) -> Conv {
        self.groups = groups;
        self
    }
    fn bias(mut self) -> Conv {
        self.bias = true;
        self
    }

    fn build(self, p: &nn::Path) -> Layer {
        let padding = match self.pad {
            Pad::Fixed(h, w) => [h, w],
            Pad::TfSame => [0, 0],
        };
        let config = nn::ConvConfigND::<[i64; 2]> { stride: [self.stride; 2], padding, groups: self.groups, bias: self.bias, ..Default::default() };
        let conv = nn::conv(p, self.c_in, self.c_out, self.kernel, config);
        let (kernel, stride, tf_same) = (self.kernel, self.stride, matches!(self.pad, Pad::TfSame));
        Box::new(move |xs: &Tensor| {
            if !tf_same {
                return conv.forward(xs);
            }
            let size = xs.size();
            let pad = |n: i64, k: i64| ((n + stride - 1) / stride - 1) * stride + k - n;
            let (ph, pw) = (pad(size[2], kernel[0]).max(0), pad(size[3], kernel[1]).max(0));
            conv.forward(&xs.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2]))
        })
    }
}

/// Convolution, batch norm, activation: where their weights live is the naming's business.
fn conv_bn(conv_path: &nn::Path, bn_path: &nn::Path, conv: Conv, eps: f64, bn_weight: bool, act: Act) -> Layer {
    let channels = conv.c_out;
    let conv = conv.build(conv_path);
    let bn = batch_norm(bn_path, channels, eps, bn_weight);
    Box::new(move |xs: &Tensor| activate(bn(&conv(xs)), act))
}

fn global_pool(xs: &Tensor) -> Tensor {
    xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

// ------------------------------------------------------------------------------------ VGG16 --

/// torchvision `vgg16`: features are classifier.4's output (after the second 4096 ReLU).
pub fn vgg16(p: &nn::Path) -> Net {
    let plan: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
    let features = p / "features";
    let mut layers: Vec<Layer> = Vec::new();
    let (mut c_in, mut index) = (3, 0);
    for channels in plan {
        if channels == 0 {
            layers.push(Box::new(|xs: &Tensor| xs.max_pool2d_default(2)));
            index += 1;
        } else {
            let conv = Conv::new(c_in, channels, 3).bias().build(&(&features / index));
            layers.push(Box::new(move |xs: &Tensor| conv(xs).relu()));
            c_in = channels;
            index += 2;
        }
    }
    let classifier = p / "classifier";
    let fc0 = nn::linear(&classifier / 0, 512 * 7 * 7, 4096, Default::default());
    let fc3 = nn::linear(&classifier / 3, 4096, 4096, Default::default());
    let fc6 = nn::linear(&classifier / 6, 4096, 1000, Default::default());
    Net::new(layers, move |map| {
        let features = map.adaptive_avg_pool2d([7, 7]).flatten(1, -1).apply(&fc0).relu().apply(&fc3).relu();
        let logits = features.apply(&fc6);
        super::Outputs { map, features, logits: Some(logits) }
    })
}

// --------------------------------------------------------------------------------- ResNet50 --

/// torchvision `resnet50`: bottleneck blocks (stride on the 3x3 convolution, as torchvision
/// and tch build it), 2048-d pooled features of layer4.
pub fn resnet50(p: &nn::Path) -> Net {
    const EPS: f64 = 1e-5;
    let stem = conv_bn(&(p / "conv1"), &(p / "bn1"), Conv::new(3, 64, 7).stride(2), EPS, true, Act::Relu);
    let mut blocks: Vec<Layer> = vec![Box::new(move |xs: &Tensor| stem(xs).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false))];
    let mut c_in = 64;
    for (stage, (width, repeats, stride)) in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)].into_iter().enumerate() {
        for index in 0..repeats {
            let b = p / format!("layer{}", stage + 1) / index;
            let stride = if index == 0 { stride } else { 1 };
            let c_out = 4 * width;
            let conv1 = conv_bn(&(&b / "conv1"), &(&b / "bn1"), Conv::new(c_in, width, 1), EPS, true, Act::Relu);
            let conv2 = conv_bn(&(&b / "conv2"), &(&b / "bn2"), Conv::new(width, width, 3).stride(stride), EPS, true, Act::Relu);
            let conv3 = conv_bn(&(&b / "conv3"), &(&b / "bn3"), Conv::new(width, c_out, 1), EPS, true, Act::None);
            let downsample = (index == 0).then(|| conv_bn(&(&b / "downsample" / 0), &(&b / "downsample" / 1), Conv::new(c_in, c_out, 1).stride(stride).valid(), EPS, true, Act::None));
            blocks.push(Box::new(move |xs: &Tensor| {
                let shortcut = downsample.as_ref().map_or_else(|| xs.shallow_clone(), |d| d(xs));
                (conv3(&conv2(&conv1(xs))) + shortcut).relu()
            }));
            c_in = c_out;
        }
    }
    let fc = nn::linear(p / "fc", 2048, 1000, Default::default());
    Net::new(blocks, move |map| {
        let features = global_pool(&map);
        let logits = features.apply(&fc);
        super::Outputs { map, features, logits: Some(logits) }
    })
}

// ------------------------------------------------------------------------------ InceptionV3 --

/// The two published layouts of InceptionV3: the same graph, different names and conventions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InceptionLayout {
    /// torchvision `inception_v3(transform_input=False)`, all blocks, 2048-d features + logits.
    Torchvision,
    /// Keras `InceptionV3` as nsfwjs ships it: `conv2d_N` / `batch_normalization_N` numbered in
    /// creation order, batch norm without scale, "same" average pooling that does not count
    /// padding, and only the ImageNet part up to `mixed5` (768-d features, no logits).
    KerasToMixed5,
}

/// Hands out parameter paths for the convolutions in creation order.
struct InceptionNames<'a> {
    root: &'a nn::Path<'a>,
    layout: InceptionLayout,
    count: usize,
}

impl InceptionNames<'_> {
    fn conv_bn(&mut self, torchvision_name: &str, conv: Conv) -> Layer {
        self.count += 1;
        match self.layout {
            InceptionLayout::Torchvision => {
                let mut parts = torchvision_name.split('.');
                let first = self.root / parts.next().unwrap_or_default();
                let p = parts.fold(first, |path, part| path / part);
                conv_bn(&(&p / "conv"), &(&p / "bn"), conv, 1e-3, true, Act::Relu)
            }
            InceptionLayout::KerasToMixed5 => {
                let conv_path = self.root / format!("conv2d_{}", self.count);
                let bn_path = self.root / format!("batch_normalization_{}", self.count);
                conv_bn(&conv_path, &bn_path, conv, 1e-3, false, Act::Relu)
            }
        }
    }
}

fn avg_pool_3x3(xs: &Tensor, count_include_pad: bool) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, count_include_pad, None::<i64>)
}

fn max_pool_3x3_s2(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// Branches of one mixed block, each a chain of layers, plus how the pooling branch starts.
enum Branch {
    Chain(Vec<Layer>),
    /// 3x3 average pooling, then the layers.
    AvgPool(Vec<Layer>),
    MaxPool,
    /// InceptionE: one stem, then two parallel heads whose outputs are concatenated.
    Split(Vec<Layer>, Vec<Layer>, Vec<Layer>),
}

fn mixed(branches: Vec<Branch>, count_include_pad: bool) -> Layer {
    Box::new(move |xs: &Tensor| {
        let chain = |layers: &Vec<Layer>, xs: Tensor| layers.iter().fold(xs, |acc, layer| layer(&acc));
        let outputs: Vec<Tensor> = branches
            .iter()
            .map(|branch| match branch {
                Branch::Chain(layers) => chain(layers, xs.shallow_clone()),
                Branch::AvgPool(layers) => chain(layers, avg_pool_3x3(xs, count_include_pad)),
                Branch::MaxPool => max_pool_3x3_s2(xs),
                Branch::Split(stem, a, b) => {
                    let stem = chain(stem, xs.shallow_clone());
                    Tensor::cat(&[chain(a, stem.shallow_clone()), chain(b, stem)], 1)
                }
            })
            .collect();
        Tensor::cat(&outputs, 1)
    })
}

pub fn inception_v3(root: &nn::Path, layout: InceptionLayout) -> Net {
    let mut n = InceptionNames { root, layout, count: 0 };
    let keras = layout == InceptionLayout::KerasToMixed5;
    let mut stem: Vec<Layer> =
        vec![n.conv_bn("Conv2d_1a_3x3", Conv::new(3, 32, 3).stride(2).valid()), n.conv_bn("Conv2d_2a_3x3", Conv::new(32, 32, 3).valid()), n.conv_bn("Conv2d_2b_3x3", Conv::new(32, 64, 3))];
    stem.push(Box::new(max_pool_3x3_s2));
    stem.push(n.conv_bn("Conv2d_3b_1x1", Conv::new(64, 80, 1)));
    stem.push(n.conv_bn("Conv2d_4a_3x3", Conv::new(80, 192, 3).valid()));
    stem.push(Box::new(max_pool_3x3_s2));

    let mut blocks: Vec<Layer> = Vec::new();
    for (name, c_in, c_pool) in [("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)] {
        let mut b = |branch: &str, conv: Conv| n.conv_bn(&format!("{name}.{branch}"), conv);
        let branches = vec![
            Branch::Chain(vec![b("branch1x1", Conv::new(c_in, 64, 1))]),
            Branch::Chain(vec![b("branch5x5_1", Conv::new(c_in, 48, 1)), b("branch5x5_2", Conv::new(48, 64, 5))]),
            Branch::Chain(vec![b("branch3x3dbl_1", Conv::new(c_in, 64, 1)), b("branch3x3dbl_2", Conv::new(64, 96, 3)), b("branch3x3dbl_3", Conv::new(96, 96, 3))]),
            Branch::AvgPool(vec![b("branch_pool", Conv::new(c_in, c_pool, 1))]),
        ];
        blocks.push(mixed(branches, !keras));
    }
    {
        let mut b = |branch: &str, conv: Conv| n.conv_bn(&format!("Mixed_6a.{branch}"), conv);
        let branches = vec![
            Branch::Chain(vec![b("branch3x3", Conv::new(288, 384, 3).stride(2).valid())]),
            Branch::Chain(vec![b("branch3x3dbl_1", Conv::new(288, 64, 1)), b("branch3x3dbl_2", Conv::new(64, 96, 3)), b("branch3x3dbl_3", Conv::new(96, 96, 3).stride(2).valid())]),
            Branch::MaxPool,
        ];
        blocks.push(mixed(branches, !keras));
    }
    // Keras' mixed5 is torchvision's Mixed_6c: the nsfwjs weights stop being ImageNet's after it.
    let sixes: &[(&str, i64)] = if keras { &[("Mixed_6b", 128), ("Mixed_6c", 160)] } else { &[("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)] };
    for (name, c7) in sixes.iter().copied() {
        let mut b = |branch: &str, conv: Conv| n.conv_bn(&format!("{name}.{branch}"), conv);
        let branches = vec![
            Branch::Chain(vec![b("branch1x1", Conv::new(768, 192, 1))]),
            Branch::Chain(vec![b("branch7x7_1", Conv::new(768, c7, 1)), b("branch7x7_2", Conv::new(c7, c7, 1).kernel(1, 7)), b("branch7x7_3", Conv::new(c7, 192, 1).kernel(7, 1))]),
            Branch::Chain(vec![
                b("branch7x7dbl_1", Conv::new(768, c7, 1)),
                b("branch7x7dbl_2", Conv::new(c7, c7, 1).kernel(7, 1)),
                b("branch7x7dbl_3", Conv::new(c7, c7, 1).kernel(1, 7)),
                b("branch7x7dbl_4", Conv::new(c7, c7, 1).kernel(7, 1)),
                b("branch7x7dbl_5", Conv::new(c7, 192, 1).kernel(1, 7)),
            ]),
            Branch::AvgPool(vec![b("branch_pool", Conv::new(768, 192, 1))]),
        ];
        blocks.push(mixed(branches, !keras));
    }
    let mut fc = None;
    if !keras {
        {
            let mut b = |branch: &str, conv: Conv| n.conv_bn(&format!("Mixed_7a.{branch}"), conv);
            let branches = vec![
                Branch::Chain(vec![b("branch3x3_1", Conv::new(768, 192, 1)), b("branch3x3_2", Conv::new(192, 320, 3).stride(2).valid())]),
                Branch::Chain(vec![
                    b("branch7x7x3_1", Conv::new(768, 192, 1)),
                    b("branch7x7x3_2", Conv::new(192, 192, 1).kernel(1, 7)),
                    b("branch7x7x3_3", Conv::new(192, 192, 1).kernel(7, 1)),
                    b("branch7x7x3_4", Conv::new(192, 192, 3).stride(2).valid()),
                ]),
                Branch::MaxPool,
            ];
            blocks.push(mixed(branches, true));
        }
        for (name, c_in) in [("Mixed_7b", 1280), ("Mixed_7c", 2048)] {
            let mut b = |branch: &str, conv: Conv| n.conv_bn(&format!("{name}.{branch}"), conv);
            let branches = vec![
                Branch::Chain(vec![b("branch1x1", Conv::new(c_in, 320, 1))]),
                Branch::Split(
                    vec![b("branch3x3_1", Conv::new(c_in, 384, 1))],
                    vec![b("branch3x3_2a", Conv::new(384, 384, 1).kernel(1, 3))],
                    vec![b("branch3x3_2b", Conv::new(384, 384, 1).kernel(3, 1))],
                ),
                Branch::Split(
                    vec![b("branch3x3dbl_1", Conv::new(c_in, 448, 1)), b("branch3x3dbl_2", Conv::new(448, 384, 3))],
                    vec![b("branch3x3dbl_3a", Conv::new(384, 384, 1).kernel(1, 3))],
                    vec![b("branch3x3dbl_3b", Conv::new(384, 384, 1).kernel(3, 1))],
                ),
                Branch::AvgPool(vec![b("branch_pool", Conv::new(c_in, 192, 1))]),
            ];
            blocks.push(mixed(branches, true));
        }
        fc = Some(nn::linear(root / "fc", 2048, 1000, Default::default()));
    }
    stem.extend(blocks);
    Net::new(stem, move |map| {
        let features = global_pool(&map);
        let logits = fc.as_ref().map(|fc| features.apply(fc));
        super::Outputs { map, features, logits }
    })
}

// ----------------------------------------------------------------------- EfficientNet-Lite0 --

/// EfficientNet-Lite0 with lukemelas-style names: no squeeze-excite, ReLU6, BN eps 1e-3,
/// TensorFlow "same" padding. 1280-d features.
pub fn efficientnet_lite0(p: &nn::Path) -> Net {
    const EPS: f64 = 1e-3;
    // (expansion, kernel, stride, output channels, repeats), B0's stages.
    let stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)];
    let stem = conv_bn(&(p / "_conv_stem"), &(p / "_bn0"), Conv::new(3, 32, 3).stride(2).pad(Pad::TfSame), EPS, true, Act::Relu6);
    let mut blocks: Vec<Layer> = vec![stem];
    let mut c_in = 32;
    for (expansion, kernel, stride, c_out, repeats) in stages {
        for repeat in 0..repeats {
            let b = p / "_blocks" / (blocks.len() - 1);
            let stride = if repeat == 0 { stride } else { 1 };
            let hidden = c_in * expansion;
            let expand = (expansion != 1).then(|| conv_bn(&(&b / "_expand_conv"), &(&b / "_bn0"), Conv::new(c_in, hidden, 1), EPS, true, Act::Relu6));
            let depthwise = conv_bn(&(&b / "_depthwise_conv"), &(&b / "_bn1"), Conv::new(hidden, hidden, kernel).stride(stride).groups(hidden).pad(Pad::TfSame), EPS, true, Act::Relu6);
            let project = conv_bn(&(&b / "_project_conv"), &(&b / "_bn2"), Conv::new(hidden, c_out, 1), EPS, true, Act::None);
            let residual = stride == 1 && c_in == c_out;
            blocks.push(Box::new(move |xs: &Tensor| {
                let hidden = match &expand {
                    Some(expand) => expand(xs),
                    None => xs.shallow_clone(),
                };
                let out = project(&depthwise(&hidden));
                if residual {
                    out + xs
                } else {
                    out
                }
            }));
            c_in = c_out;
        }
    }
    blocks.push(conv_bn(&(p / "_conv_head"), &(p / "_bn1"), Conv::new(320, 1280, 1), EPS, true, Act::Relu6));
    let fc = nn::linear(p / "_fc", 1280, 1000, Default::default());
    Net::new(blocks, move |map| {
        let features = global_pool(&map);
        let logits = features.apply(&fc);
        super::Outputs { map, features, logits: Some(logits) }
    })
}

// ----------------------------------------------------------------------------- SqueezeNet 1.1 --

/// SqueezeNet 1.1, caffe topology, torchvision names: 512-d pooled features of fire9.
pub fn squeezenet1_1(p: &nn::Path) -> Net {
    let features = p / "features";
    let conv1 = Conv::new(3, 64, 3).stride(2).valid().bias().build(&(&features / 0));
    let fire = |index: i64, c_in: i64, squeeze: i64, expand: i64| -> Layer {
        let f = &features / index;
        let squeeze_conv = Conv::new(c_in, squeeze, 1).bias().build(&(&f / "squeeze"));
        let expand1 = Conv::new(squeeze, expand, 1).bias().build(&(&f / "expand1x1"));
        let expand3 = Conv::new(squeeze, expand, 3).bias().build(&(&f / "expand3x3"));
        Box::new(move |xs: &Tensor| {
            let squeezed = squeeze_conv(xs).relu();
            Tensor::cat(&[expand1(&squeezed).relu(), expand3(&squeezed).relu()], 1)
        })
    };
    // Caffe pools round up: torchvision's ceil_mode=True.
    let pool = || -> Layer { Box::new(|xs: &Tensor| xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true)) };
    let layers: Vec<Layer> = vec![
        Box::new(move |xs: &Tensor| conv1(xs).relu()),
        pool(),
        fire(3, 64, 16, 64),
        fire(4, 128, 16, 64),
        pool(),
        fire(6, 128, 32, 128),
        fire(7, 256, 32, 128),
        pool(),
        fire(9, 256, 48, 192),
        fire(10, 384, 48, 192),
        fire(11, 384, 64, 256),
        fire(12, 512, 64, 256),
    ];
    let conv10 = Conv::new(512, 1000, 1).valid().bias().build(&(p / "classifier" / 1));
    Net::new(layers, move |map| {
        let features = global_pool(&map);
        let logits = global_pool(&conv10(&map).relu());
        super::Outputs { map, features, logits: Some(logits) }
    })
}
