// The reference forward pass of nsfwjs' InceptionV3 up to mixed5, by TensorFlow.js itself
// (pure-JS CPU backend), for the Rust port to match.
//
//   NODE_PATH=models/cache/tfjs/node_modules node tests/data/tfjs_reference.js MODEL_DIR OUT_DIR
//
// MODEL_DIR is nsfwjs' dist/models/inception_v3 (model.min.js and its shards). Writes, as
// little-endian float32: OUT_DIR/input.bin (299x299x3, HWC, values in [-1, 1]) and
// OUT_DIR/mixed5_pooled.bin (768 channel means of the mixed5 output).
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const tfl = require("@tensorflow/tfjs-layers");

async function main() {
  const [dir, out] = process.argv.slice(2);
  const model = require(path.resolve(dir, "model.min.js"));
  const manifest = model.weightsManifest[0];
  const shards = manifest.paths.map((p) => Buffer.from(require(path.resolve(dir, p + ".min.js")), "base64"));
  const weights = Buffer.concat(shards);
  const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength);
  await tf.setBackend("cpu");
  const net = await tfl.loadLayersModel(tf.io.fromMemory({ modelTopology: model.modelTopology, weightSpecs: manifest.weights, weightData }));
  const trunk = tfl.model({ inputs: net.inputs, outputs: net.getLayer("mixed5").output });

  // A smooth, deterministic image: every channel a different wave.
  const size = 299;
  const input = new Float32Array(size * size * 3);
  for (let h = 0; h < size; h++)
    for (let w = 0; w < size; w++)
      for (let c = 0; c < 3; c++) input[(h * size + w) * 3 + c] = Math.sin(0.031 * h * (c + 1) + 0.017 * w) * Math.cos(0.011 * w * (3 - c));
  const pooled = tf.tidy(() => tf.mean(trunk.predict(tf.tensor4d(input, [1, size, size, 3])), [1, 2]).dataSync());
  fs.writeFileSync(path.join(out, "input.bin"), Buffer.from(input.buffer));
  fs.writeFileSync(path.join(out, "mixed5_pooled.bin"), Buffer.from(new Float32Array(pooled).buffer));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
