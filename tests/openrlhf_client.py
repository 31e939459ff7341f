"""Run OpenRLHF's own remote-reward client against a URL; prints JSON. Executed by the separate
``.venv-openrlhf`` interpreter (openrlhf installed --no-deps, plus aiohttp): never imported by
the project's tests, whose environment must not hold openrlhf (its wheel ships a top-level
``tests`` package).

    .venv-openrlhf/bin/python tests/openrlhf_client.py '{"url": ..., "queries": [...], ...}'

``openrlhf/__init__`` and ``openrlhf/utils/__init__`` import the training stack (torch, sympy,
deepspeed); the client module ``openrlhf/utils/agent.py`` needs only aiohttp and the logging
module, so the two packages are stood in by empty modules and agent.py is loaded from its file.
"""

import asyncio
import importlib.util
import json
import site
import sys
import types
from pathlib import Path
from types import SimpleNamespace


def load_agent():
    root = next(Path(p) / "openrlhf" for p in site.getsitepackages() if (Path(p) / "openrlhf").is_dir())
    for name, path in (("openrlhf", root), ("openrlhf.utils", root / "utils")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    spec = importlib.util.spec_from_file_location("openrlhf.utils.agent", root / "utils" / "agent.py")
    agent = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = agent
    spec.loader.exec_module(agent)
    return agent


class CharTokenizer:
    """One token per character: decode(encode(x)) == x, special-token text kept verbatim."""

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        return {"input_ids": [SimpleNamespace(tolist=lambda: [ord(c) for c in text])]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class FixedEngine:
    """Generates a fixed continuation (with an EOS token's text, as a real decode keeps it)."""

    def __init__(self, text):
        self.text = text

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = SimpleNamespace(token_ids=[ord(c) for c in self.text], text=self.text, finish_reason="stop",
                              logprobs=None)
        return SimpleNamespace(outputs=[out])


async def main(case):
    agent = load_agent()
    ex = agent.SingleTurnAgentExecutor(case["url"])
    result = {"version": agent.__file__}
    # The HTTP call as OpenRLHF makes it: one request, query/prompts/labels lists.
    result["fetch"] = await ex._fetch_rewards_via_http(case["queries"], case["prompts"], case["labels"])
    # A whole rollout step: prompt -> generation -> decode(prompt + response) -> reward.
    params = SimpleNamespace(max_tokens=None, logprobs=None)
    out = await ex.execute(case["prompts"][0], case["labels"][0], params, 4096, CharTokenizer(),
                           FixedEngine(case["generation"]))
    result["execute"] = {"reward": out["reward"], "scores": out["scores"], "extra_logs": out["extra_logs"]}
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
