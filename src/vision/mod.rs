//! The image side: backbones behind one abstraction, and what is built on them.
//!
//! A [`BackboneSpec`] says everything that differs between networks (architecture, weights
//! file, input size, normalisation, feature width); one generic path loads and runs any of
//! them. Each profile is three specs.

pub mod data;
pub mod ensemble;
pub mod eval;
pub mod nets;
pub mod preprocess;
pub mod styles;
pub mod train;
mod tune;

use std::path::Path;

use anyhow::Context;
use tch::{nn, Device, Kind, Tensor};

use crate::config::{DeviceChoice, ModelsConfig, Precision, Profile};
use preprocess::{Normalisation, Preprocess, Resample};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Vgg16,
    ResNet50,
    InceptionV3(nets::InceptionLayout),
    EfficientNetLite0,
    SqueezeNet11,
}

/// Everything one backbone needs, as data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackboneSpec {
    /// The manifest id of its weights.
    pub id: &'static str,
    pub architecture: Architecture,
    /// Safetensors file, relative to the models folder.
    pub weights: &'static str,
    pub preprocess: Preprocess,
    pub feature_dim: i64,
}

impl BackboneSpec {
    /// Width of the retrieval descriptor: channels of the last feature map (VGG16's conv5 has
    /// 512; the others' features are that map, average-pooled).
    pub fn descriptor_dim(&self) -> i64 {
        match self.architecture {
            Architecture::Vgg16 => 512,
            _ => self.feature_dim,
        }
    }
}

const IMAGENET_224: Preprocess = Preprocess { resize: 256, crop: 224, normalisation: Normalisation::ImageNet, resample: Resample::Bilinear };

/// The three backbones of a profile.
pub fn backbones(profile: Profile) -> [BackboneSpec; 3] {
    match profile {
        Profile::Kit => [
            BackboneSpec {
                id: "efficientnet_lite0",
                architecture: Architecture::EfficientNetLite0,
                weights: "kit/efficientnet_lite0.safetensors",
                preprocess: Preprocess { resize: 256, crop: 224, normalisation: Normalisation::Centred128, resample: Resample::Bilinear },
                feature_dim: 1280,
            },
            BackboneSpec {
                id: "squeezenet1_1",
                architecture: Architecture::SqueezeNet11,
                weights: "kit/squeezenet1_1.safetensors",
                preprocess: Preprocess { resize: 256, crop: 227, normalisation: Normalisation::CaffeBgr([104.006, 116.669, 122.679]), resample: Resample::Bilinear },
                feature_dim: 512,
            },
            BackboneSpec {
                id: "inception_v3_mixed5",
                architecture: Architecture::InceptionV3(nets::InceptionLayout::KerasToMixed5),
                weights: "kit/inception_v3_mixed5.safetensors",
                preprocess: Preprocess { resize: 299, crop: 299, normalisation: Normalisation::PlusMinusOne, resample: Resample::Bilinear },
                feature_dim: 768,
            },
        ],
        Profile::Chapter => [
            BackboneSpec { id: "vgg16", architecture: Architecture::Vgg16, weights: "chapter/vgg16.safetensors", preprocess: IMAGENET_224, feature_dim: 4096 },
            BackboneSpec { id: "resnet50", architecture: Architecture::ResNet50, weights: "chapter/resnet50.safetensors", preprocess: IMAGENET_224, feature_dim: 2048 },
            BackboneSpec {
                id: "inception_v3",
                architecture: Architecture::InceptionV3(nets::InceptionLayout::Torchvision),
                weights: "chapter/inception_v3.safetensors",
                preprocess: Preprocess { resize: 342, crop: 299, normalisation: Normalisation::ImageNet, resample: Resample::Bilinear },
                feature_dim: 2048,
            },
        ],
    }
}

/// What a backbone computes for a batch.
pub struct Outputs {
    /// (N, C, h, w) the last feature map, the one `features` are pooled from (VGG16: conv5,
    /// before its fully connected layers).
    pub map: Tensor,
    /// (N, feature_dim) pooled features.
    pub features: Tensor,
    /// (N, 1000) ImageNet logits, where the weights include the classifier.
    pub logits: Option<Tensor>,
}

/// A loaded backbone: its spec, its weights, and the network over them.
pub struct Backbone {
    pub spec: BackboneSpec,
    pub device: Device,
    /// The weights' and activations' number format; features always come out f32.
    kind: Kind,
    // Owns the parameters the network's closures refer to.
    vars: nn::VarStore,
    net: nets::Net,
}

pub fn device(choice: DeviceChoice) -> anyhow::Result<Device> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => anyhow::bail!("models.device = \"cuda\" but libtorch sees no CUDA GPU; use \"auto\" or \"cpu\""),
    }
}

/// Where backbones run, and in which number format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub precision: Precision,
}

impl From<Device> for Placement {
    fn from(device: Device) -> Placement {
        Placement { device, precision: Precision::F32 }
    }
}

/// The device and precision `models` asks for; half precision only where it pays, on a GPU.
pub fn placement(models: &ModelsConfig) -> anyhow::Result<Placement> {
    let device = device(models.device)?;
    anyhow::ensure!(models.precision == Precision::F32 || device.is_cuda(), "models.precision = \"f16\" needs a CUDA GPU, and the models run on the CPU here: set models.precision = \"f32\"");
    Ok(Placement { device, precision: models.precision })
}

impl Backbone {
    /// Builds the network for `spec` with untrained parameters (for shape tests and parity
    /// checks that load weights themselves).
    pub fn untrained(spec: BackboneSpec, placement: impl Into<Placement>) -> Backbone {
        let Placement { device, precision } = placement.into();
        let mut vars = nn::VarStore::new(device);
        let root = vars.root();
        let net = match spec.architecture {
            Architecture::Vgg16 => nets::vgg16(&root),
            Architecture::ResNet50 => nets::resnet50(&root),
            Architecture::InceptionV3(layout) => nets::inception_v3(&root, layout),
            Architecture::EfficientNetLite0 => nets::efficientnet_lite0(&root),
            Architecture::SqueezeNet11 => nets::squeezenet1_1(&root),
        };
        let kind = match precision {
            Precision::F32 => Kind::Float,
            Precision::F16 => {
                vars.half();
                Kind::Half
            }
        };
        Backbone { spec, device, kind, vars, net }
    }

    /// Loads `spec`'s weights from `models_dir`; every parameter the network declares must be
    /// in the file, with the right shape.
    pub fn load(spec: BackboneSpec, models_dir: &Path, placement: impl Into<Placement>) -> anyhow::Result<Backbone> {
        let path = models_dir.join(spec.weights);
        anyhow::ensure!(path.exists(), "{} is missing: run `make setup` (offline kit) or `lookalike models fetch chapter`, then `lookalike models list`", path.display());
        let mut backbone = Backbone::untrained(spec, placement);
        backbone.load_weights(&path)?;
        Ok(backbone)
    }

    pub fn load_weights(&mut self, path: &Path) -> anyhow::Result<()> {
        self.vars.load(path).with_context(|| format!("cannot load {} into {}", path.display(), self.spec.id))?;
        // Loading gives every variable the file's number format (f32) again.
        if self.kind == Kind::Half {
            self.vars.half();
        }
        // Inference never needs gradients; fine-tuning opens the layers it trains.
        for (_, tensor) in self.vars.variables() {
            let _ = tensor.set_requires_grad(false);
        }
        Ok(())
    }

    /// Runs a (N, 3, H, W) batch, without gradients.
    pub fn forward(&self, images: &Tensor) -> Outputs {
        let Outputs { map, features, logits } = tch::no_grad(|| self.net.forward(&images.to_device(self.device).to_kind(self.kind)));
        // The map too: GeM cubes it, and in f16 an activation above 40 would overflow.
        Outputs { map: map.to_kind(Kind::Float), features: features.to_kind(Kind::Float), logits: logits.map(|l| l.to_kind(Kind::Float)) }
    }

    /// Stages in the network (what tuning counts its last ones in).
    pub fn stages(&self) -> usize {
        self.net.stages()
    }

    /// The map after every stage but the last `tail`, without gradients: what tuning caches.
    pub fn frozen_map(&self, images: &Tensor, tail: usize) -> Tensor {
        tch::no_grad(|| self.net.prefix(&images.to_device(self.device).to_kind(self.kind), self.stages().saturating_sub(tail)))
    }

    /// The outputs from a [`frozen_map`](Self::frozen_map) through the last `tail` stages, with
    /// gradients flowing into the parameters [`open_tail`](Self::open_tail) opened; batch norm
    /// keeps its running statistics, as is usual when fine-tuning.
    pub fn tail_trainable(&self, map: &Tensor, tail: usize) -> Outputs {
        self.net.rest(&map.to_device(self.device).to_kind(self.kind), self.stages().saturating_sub(tail))
    }

    /// Opens to training the weights and biases the last `tail` stages use, and freezes every
    /// other parameter; returns their names. They are found by autograd: whatever a pass
    /// through those stages alone reaches (batch norm's running statistics aside).
    pub fn open_tail(&mut self, tail: usize) -> Vec<String> {
        let variables = self.vars.variables();
        // Batch norm's running statistics never take gradients (libtorch refuses them).
        for (name, tensor) in &variables {
            let _ = tensor.set_requires_grad(!name.contains("running_"));
        }
        let size = self.spec.preprocess.crop as i64;
        let map = self.frozen_map(&Tensor::zeros([1, 3, size, size], (Kind::Float, self.device)), tail).detach();
        self.tail_trainable(&map, tail).features.sum(Kind::Float).backward();
        let mut open: Vec<String> = variables.iter().filter(|(_, tensor)| tensor.grad().defined()).map(|(name, _)| name.clone()).collect();
        open.sort();
        for (name, tensor) in &variables {
            let mut grad = tensor.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
            let _ = tensor.set_requires_grad(open.contains(name));
        }
        open
    }

    /// Freezes every parameter again.
    pub fn close(&mut self) {
        for (_, tensor) in self.vars.variables() {
            let _ = tensor.set_requires_grad(false);
        }
    }

    pub fn vars(&self) -> &nn::VarStore {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stages_open_alone_and_split_runs_equal_the_whole() {
        tch::manual_seed(0);
        let mut squeezenet = Backbone::untrained(backbones(Profile::Kit)[1], Device::Cpu);
        let open = squeezenet.open_tail(1);
        let fire12 = ["bias", "weight"].iter().flat_map(|p| ["expand1x1", "expand3x3", "squeeze"].map(|c| format!("features.12.{c}.{p}"))).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(open.iter().cloned().collect::<std::collections::BTreeSet<_>>(), fire12, "the last fire module, not the classifier");
        let trainable = squeezenet.vars().variables().into_iter().filter(|(_, t)| t.requires_grad()).count();
        assert_eq!(trainable, 6);
        let mut efficientnet = Backbone::untrained(backbones(Profile::Kit)[0], Device::Cpu);
        let open = efficientnet.open_tail(2);
        assert!(open.iter().all(|n| n.starts_with("_blocks.15.") || n.starts_with("_conv_head") || n.starts_with("_bn1.")), "{open:?}");
        assert!(open.iter().any(|n| n.starts_with("_blocks.15.")) && open.iter().any(|n| n.starts_with("_conv_head")));
        efficientnet.close();
        let images = Tensor::randn([2, 3, 224, 224], (tch::Kind::Float, Device::Cpu));
        let whole = efficientnet.forward(&images).features;
        let split = tch::no_grad(|| efficientnet.tail_trainable(&efficientnet.frozen_map(&images, 2), 2).features);
        assert!(whole.allclose(&split, 1e-5, 1e-5, false));
    }

    #[test]
    fn every_backbone_has_the_feature_width_its_spec_declares() {
        tch::manual_seed(0);
        for profile in [Profile::Kit, Profile::Chapter] {
            for spec in backbones(profile) {
                let backbone = Backbone::untrained(spec, Device::Cpu);
                let size = spec.preprocess.crop as i64;
                let outputs = backbone.forward(&Tensor::randn([2, 3, size, size], (tch::Kind::Float, Device::Cpu)));
                assert_eq!(outputs.features.size(), [2, spec.feature_dim], "{}", spec.id);
                if let Some(logits) = outputs.logits {
                    assert_eq!(logits.size(), [2, 1000], "{}", spec.id);
                }
            }
        }
    }
}
