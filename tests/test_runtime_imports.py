"""The runtime runs an artifact from the artifact alone: loading and running one never imports the
compiler, and no input, output or family name is written in runtime/ (the contract says them)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import runtime
from compiler.pipeline import compile_spec

TINY = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, architectures=["LlamaForCausalLM"], model_type="llama")

SCRIPT = """
import sys
import torch
import runtime
model = runtime.load(sys.argv[1], sys.argv[2])
ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
model(ids, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
model.generate(ids, max_new_tokens=3)
print("compiler modules:", sorted(m for m in sys.modules if m == "compiler" or m.startswith("compiler.")))
"""


def test_loading_and_running_an_artifact_never_imports_the_compiler(tmp_path):
    artifact = compile_spec("specs/llama.yaml", tmp_path / "art").directory
    folder = runtime.save_pretrained(runtime.init_random(artifact, TINY), tmp_path / "ckpt")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(artifact), str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "compiler modules: []"


# The names the shipped specs give their inputs, masks and outputs, and their families.
NAMES = re.compile(r"input_ids|position_ids|token_type_ids|pixel_values|decoder_|attention_mask|last_hidden_state|"
                   r"pooler_output|start_logits|end_logits|\b(llama|mistral|qwen\d*|phi\d*|gemma\d*|gpt\d*|bert|"
                   r"roberta|distilbert|vit|t5|minilm)\b", re.IGNORECASE)


# Transformers' own API names that happen to match: a GenerationConfig field, and the keys a tokenizer
# returns when no model names them (a tokenizer attached to a model uses the model's contract).
TRANSFORMERS_API = {("runtime/generation/config.py", "decoder_start_token_id"),
                    ("runtime/generation/plan.py", "decoder_start_token_id"),
                    ("runtime/generation/tokenizer.py", "DEFAULT_KEYS")}


def test_no_input_output_or_family_name_is_written_in_the_runtime():
    found = []
    for path in sorted(Path("runtime").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(str(path) == f and api in line for f, api in TRANSFORMERS_API):
                continue
            found += [f"{path}:{number}: {m.group(0)}" for m in NAMES.finditer(line)]
    assert found == []
