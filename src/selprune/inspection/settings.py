"""InspectConfig: everything that decides an inspection, as a settings dataclass (flags derive from it).

The costs in the help texts were measured with the embedded model (SmolLM2-135M, bf16) on 2 CPU cores
(docs/PERFORMANCE.md, "What an inspection costs").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Settings, setting
from ..errors import UserError


@dataclass
class InspectConfig(Settings):
    run: str = setting("", "the folder to inspect: a pruning run, or an unlearning folder (selprune unlearn)")
    step: tuple[int, ...] = setting((), "pruning steps to set beside the original model, e.g. --step 1 3 "
                                    "(default: the run's last step); each adds its generations, checks and lens. "
                                    "An unlearning folder has one step: the checkpoint it kept")
    prompts: int = setting(8, "prompts per dataset, each a prefix of one of the run's held-out evaluation "
                           "documents")
    prefix_tokens: int = setting(32, "tokens of each prompt")
    new_tokens: int = setting(32, "tokens each model writes after a prompt; about 5 s per model and dataset "
                              "at the defaults")
    functions: int = setting(16, "Python functions whose body each model writes, for the Python check (0: "
                             "none); about 10 s per model at the defaults")
    body_tokens: int = setting(64, "tokens each model writes as a function's body")
    python: str = setting("auto", "where the functions come from, less any document the run scored on: auto "
                          "= the run's own .py files, else the built-in python set; or a dataset spec")
    sample: bool = setting(False, "also sample, seeded, at --temperature (doubles the generation cost)")
    temperature: float = setting(0.7, "temperature of the sampling")
    seed: int = setting(0, "seed of the sampling")
    lens: bool = setting(True, "the logit lens: top-1 of every block's output read through the final norm "
                         "and head, on the run's evaluation chunks; about 20 s per model and dataset at "
                         "1,024 tokens")
    lens_tokens: int = setting(1024, "evaluation tokens per dataset for the logit lens (0: all of the run's)")
    watch: tuple[str, ...] = setting((), "more datasets to inspect, neither forgotten nor retained, with the "
                                     "chunks `selprune run --watch` would have evaluated (the run's own watched "
                                     "datasets are always inspected); each adds its generations, checks and lens")

    def validate(self) -> None:
        """Refuse settings that cannot make an inspection, before any model is loaded."""
        self.check_finite()
        self.check_at_least(1, "prompts", "prefix_tokens", "new_tokens", "body_tokens")
        self.check_at_least(0, "functions", "lens_tokens")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {self.temperature} (greedy decoding is "
                            "always done; leave out --sample to do only that)")
        if not self.run:
            raise UserError("no run folder given: name the run folder to inspect")
        if len(set(self.watch)) < len(self.watch):
            raise UserError("a dataset is named twice in --watch: name each once")

    def steps(self, available: list[int], described: str) -> list[int]:
        """The steps asked for (default: the last), each one that the folder can rebuild (`available`, which
        `described` names for the message)."""
        if not self.step:
            return [available[-1]]
        steps = sorted(set(self.step))
        wrong = [k for k in steps if k not in available]
        if wrong:
            raise UserError(f"--step {wrong[0]}: {Path(self.run)} has {described} (step 0, the original model, is "
                            "always shown)")
        return steps
