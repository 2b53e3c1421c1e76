"""Builds a tiny MNLI-shaped BERT with random weights and scores sentences with the transformers
zero-shot pipeline: the reference the Rust NLI method must match.

    python3 tests/data/tiny_nli.py OUT_DIR VOCAB_TXT REQUEST_JSON

REQUEST_JSON: {"template": "...", "labels": [...], "sentences": [...]}. Writes OUT_DIR/model
(config.json, model.safetensors, vocab.txt) and prints {sentence: [score per label]} as JSON.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer, pipeline

out_dir, vocab, request = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
model_dir = out_dir / "model"
model_dir.mkdir(parents=True, exist_ok=True)
shutil.copy(vocab, model_dir / "vocab.txt")

torch.manual_seed(0)
config = BertConfig(
    vocab_size=sum(1 for _ in open(vocab, encoding="utf-8")),
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=128, num_labels=3,
    # Wider than the default 0.02 so that scores differ between labels and the comparison bites.
    initializer_range=0.3,
    id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
    label2id={"contradiction": 0, "neutral": 1, "entailment": 2},
)
model = BertForSequenceClassification(config).eval()
model.save_pretrained(model_dir, safe_serialization=True)
tokenizer = BertTokenizer(str(model_dir / "vocab.txt"), do_lower_case=True)
tokenizer.save_pretrained(model_dir)

classify = pipeline("zero-shot-classification", model=model, tokenizer=tokenizer, device=-1)
scores = {}
for sentence in request["sentences"]:
    result = classify(sentence, candidate_labels=request["labels"], hypothesis_template=request["template"], multi_label=True)
    by_label = dict(zip(result["labels"], result["scores"]))
    scores[sentence] = [by_label[label] for label in request["labels"]]
print(json.dumps(scores))
