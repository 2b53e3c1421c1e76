//! Linear layers in 8 bits for the CPU: each weight matrix quantised once (one scale and zero
//! point per matrix, as `torch.ao.quantization.quantize_dynamic` chooses them), activations
//! quantised per call by FBGEMM. On ViT-B/32's image tower this is what `models.clip_int8`
//! buys; python's quantize_dynamic, which leaves attention's projections in f32, took the tower
//! from 137 to 74 ms here at 1 - cosine 1.5e-4 (random weights, 2 cores).

use tch::{Kind, Scalar, Tensor};

pub(super) struct Int8Linear {
    weight: Tensor,
    packed: Tensor,
    col_offsets: Tensor,
    scale: f64,
    zero_point: i64,
    bias: Tensor,
}

impl Int8Linear {
    /// `weight` (out, in) and `bias` (out), f32 on the CPU.
    pub(super) fn new(weight: &Tensor, bias: &Tensor) -> anyhow::Result<Int8Linear> {
        let weight = weight.to_kind(Kind::Float).contiguous();
        let (qmin, qmax) = (-128.0, 127.0);
        let min = weight.min().double_value(&[]).min(0.0);
        let max = weight.max().double_value(&[]).max(0.0);
        let scale = match (max - min) / (qmax - qmin) {
            s if s > 0.0 && (1.0 / s).is_finite() => s,
            _ => 0.1,
        };
        // The zero point from whichever end loses less, as PyTorch's ChooseQuantizationParams.
        let (from_min, from_max) = (qmin - min / scale, qmax - max / scale);
        let zero_point = if qmin.abs() + (min / scale).abs() < qmax.abs() + (max / scale).abs() { from_min } else { from_max }.round().clamp(qmin, qmax);
        let quantised = ((&weight / scale).round() + zero_point).clamp(qmin, qmax).to_kind(Kind::Int8);
        let inputs = weight.size()[1];
        let col_offsets = (quantised.to_kind(Kind::Int64).sum_dim_intlist([1].as_slice(), false, Kind::Int64) - zero_point as i64 * inputs).to_kind(Kind::Int);
        let packed = quantised.f_fbgemm_pack_quantized_matrix()?;
        Ok(Int8Linear { weight: quantised, packed, col_offsets, scale, zero_point: zero_point as i64, bias: bias.to_kind(Kind::Float).contiguous() })
    }

    pub(super) fn forward(&self, xs: &Tensor) -> Tensor {
        xs.fbgemm_linear_int8_weight_fp32_activation(&self.weight, &self.packed, &self.col_offsets, Scalar::float(self.scale), Scalar::int(self.zero_point), &self.bias)
    }
}
