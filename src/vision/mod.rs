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
pub mod train;

use std::path::Path;

use anyhow::Context;
use tch::{nn, Device, Kind, Tensor};

use crate::config::{DeviceChoice, ModelsConfig, Precision, Profile};
use preprocess::{Normalisation, Preprocess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Vgg16,
    ResNet50,
    InceptionV3(nets::InceptionLayout),
    EfficientNetLite0,
    SqueezeNet11,
}

impl Architecture {
    /// The ImageNet classifier layer, which computes logits from the features and so never
    /// shapes them.
    fn classifier_layer(self) -> Option<&'static str> {
        match self {
            Architecture::Vgg16 => Some("classifier.6"),
            Architecture::ResNet50 | Architecture::InceptionV3(nets::InceptionLayout::Torchvision) => Some("fc"),
            Architecture::InceptionV3(nets::InceptionLayout::KerasToMixed5) => None,
            Architecture::EfficientNetLite0 => Some("_fc"),
            Architecture::SqueezeNet11 => Some("classifier.1"),
        }
    }
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

const IMAGENET_224: Preprocess = Preprocess { resize: 256, crop: 224, normalisation: Normalisation::ImageNet };

/// The three backbones of a profile.
pub fn backbones(profile: Profile) -> [BackboneSpec; 3] {
    match profile {
        Profile::Kit => [
            BackboneSpec {
                id: "efficientnet_lite0",
                architecture: Architecture::EfficientNetLite0,
                weights: "kit/efficientnet_lite0.safetensors",
                preprocess: Preprocess { resize: 256, crop: 224, normalisation: Normalisation::Centred128 },
                feature_dim: 1280,
            },
            BackboneSpec {
                id: "squeezenet1_1",
                architecture: Architecture::SqueezeNet11,
                weights: "kit/squeezenet1_1.safetensors",
                preprocess: Preprocess { resize: 256, crop: 227, normalisation: Normalisation::CaffeBgr([104.006, 116.669, 122.679]) },
                feature_dim: 512,
            },
            BackboneSpec {
                id: "inception_v3_mixed5",
                architecture: Architecture::InceptionV3(nets::InceptionLayout::KerasToMixed5),
                weights: "kit/inception_v3_mixed5.safetensors",
                preprocess: Preprocess { resize: 299, crop: 299, normalisation: Normalisation::PlusMinusOne },
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
                preprocess: Preprocess { resize: 342, crop: 299, normalisation: Normalisation::ImageNet },
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
    forward: nets::Forward,
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
        let forward = match spec.architecture {
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
        Backbone { spec, device, kind, vars, forward }
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
        let Outputs { map, features, logits } = tch::no_grad(|| (self.forward)(&images.to_device(self.device).to_kind(self.kind)));
        // The map too: GeM cubes it, and in f16 an activation above 40 would overflow.
        Outputs { map: map.to_kind(Kind::Float), features: features.to_kind(Kind::Float), logits: logits.map(|l| l.to_kind(Kind::Float)) }
    }

    /// Pooled features with gradients flowing into whatever layers [`Backbone::unfreeze_last`]
    /// opened; batch norm keeps its running statistics, as is usual when fine-tuning.
    pub fn forward_trainable(&self, images: &Tensor) -> Tensor {
        (self.forward)(&images.to_device(self.device)).features
    }

    /// Parameterised layers (weight-carrying modules) that shape the features, in the order
    /// the network creates them.
    pub fn layers(&self) -> Vec<String> {
        let names = self.vars.variables();
        let mut layers: Vec<String> = Vec::new();
        for tensor in self.vars.trainable_variables() {
            let Some((name, _)) = names.iter().find(|(_, t)| t.data_ptr() == tensor.data_ptr()) else { continue };
            if !name.ends_with(".weight") {
                continue;
            }
            let layer = name.trim_end_matches(".weight").to_string();
            if Some(layer.as_str()) != self.spec.architecture.classifier_layer() && !layers.contains(&layer) {
                layers.push(layer);
            }
        }
        layers
    }

    /// Freezes every parameter, then opens the weights and biases of the last `count` layers
    /// to training (the chapter's `layer_adjust`). Returns their names.
    pub fn unfreeze_last(&mut self, count: usize) -> Vec<String> {
        let layers = self.layers();
        let open: Vec<String> = layers[layers.len().saturating_sub(count)..].to_vec();
        for (name, tensor) in self.vars.variables() {
            let trainable = open.iter().any(|layer| name == format!("{layer}.weight") || name == format!("{layer}.bias"));
            let _ = tensor.set_requires_grad(trainable);
        }
        open
    }

    pub fn vars(&self) -> &nn::VarStore {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_come_in_network_order_and_only_the_last_ones_open() {
        let mut backbone = Backbone::untrained(backbones(Profile::Kit)[1], Device::Cpu);
        let layers = backbone.layers();
        assert_eq!(layers.first().map(String::as_str), Some("features.0"));
        assert_eq!(layers.len(), 25, "conv1 and eight fires of three convs; not the classifier");
        let open = backbone.unfreeze_last(2);
        assert_eq!(open, ["features.12.expand1x1", "features.12.expand3x3"]);
        let trainable: Vec<String> = backbone.vars().variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
        assert_eq!(trainable.len(), 4, "{trainable:?}");
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
