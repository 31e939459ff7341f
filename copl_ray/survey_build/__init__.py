"""Survey-set construction (paper Sec. 3: S = {(q_i, a_i, b_i)}) from a prompt collection.

Candidate responses are generated through Ray Data, with vLLM (Ray Data LLM's
``build_processor(vLLMEngineProcessorConfig)``) in its own environment, or with transformers
``generate`` where vLLM is not installed; both backends take and give the same rows
(`copl_ray.survey_build.backends`). Generation is written in per-shard files, atomically, so a
restarted job skips what is done (`copl_ray.survey_build.generate`). Pairs are then built per prompt
with length limits, de-duplication on MiniLM embeddings and an optional preference for informative
pairs (`copl_ray.survey_build.pairs`). `copl_ray.survey_build.label` adds simulated annotations, so
a built survey can be trained on. `jobs/build_survey.py` wires these together.
"""
