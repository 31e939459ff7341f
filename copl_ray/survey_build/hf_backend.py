"""Fallback backend: transformers ``generate`` in a Ray Data actor, the same rows in and out as
the vLLM backend (backends.py). Importable from the core install (no vLLM)."""

from __future__ import annotations

import numpy as np

from copl_ray.survey_build.spec import SamplingSpec, TransformersSpec

__all__ = ["HFGenerator", "hf_candidates"]


class HFGenerator:
    """A Ray Data UDF: one sampled continuation per request row.

    Rows of a batch are left-padded and sampled together; the batch's random stream is seeded
    from the rows' own seeds, so a batch of the same requests gives the same candidates.
    """

    def __init__(self, model_path: str, sampling: dict, dtype: str, threads: int, chat_template: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        self.tok.model_input_names = ["input_ids", "attention_mask"]  # BERT-style vocabularies add token_type_ids
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.sampling = sampling
        self.chat_template = chat_template and self.tok.chat_template is not None

    def _texts(self, prompts) -> list[str]:
        if not self.chat_template:
            return [str(p) for p in prompts]
        return [self.tok.apply_chat_template([{"role": "user", "content": str(p)}], tokenize=False,
                                             add_generation_prompt=True) for p in prompts]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        enc = self.tok(self._texts(batch["prompt"]), return_tensors="pt", padding=True,
                       add_special_tokens=not self.chat_template).to(self.device)
        s = self.sampling
        greedy = s["temperature"] == 0
        torch.manual_seed(int(np.bitwise_xor.reduce(batch["seed"].astype(np.int64))) % (2**31))
        with torch.inference_mode():
            out = self.model.generate(
                **enc, do_sample=not greedy, temperature=None if greedy else s["temperature"],
                top_p=None if greedy else s["top_p"], max_new_tokens=s["max_tokens"],
                pad_token_id=self.tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        eos = self.tok.eos_token_id
        lengths = []
        for row in new:  # tokens up to and including the first EOS (vLLM counts it too)
            cut = row.index(eos) + 1 if eos is not None and eos in row else len(row)
            lengths.append(cut)
        texts = [self.tok.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, lengths)]
        return {"prompt_id": batch["prompt_id"], "shard": batch["shard"], "candidate": batch["candidate"],
                "response": np.asarray(texts, dtype=object), "n_tokens": np.asarray(lengths, np.int64)}


def hf_candidates(requests, model_path: str, sampling: SamplingSpec, spec: TransformersSpec, chat_template: bool):
    """Candidates Dataset (backends.py) of ``requests`` through ``HFGenerator`` actors."""
    params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    import ray

    return requests.map_batches(
        HFGenerator,
        fn_constructor_kwargs=dict(model_path=model_path, sampling=params, dtype=spec.dtype,
                                   threads=spec.threads, chat_template=chat_template),
        batch_size=spec.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=spec.num_cpus, num_gpus=spec.num_gpus,
    )
