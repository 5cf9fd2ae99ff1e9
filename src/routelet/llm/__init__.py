"""LLM labeling: the Claude teacher (ingest, serve-time deferral) and the LLM baseline.

    from routelet.llm import TeacherConfig, make_teacher
    teacher = make_teacher(taxonomy, TeacherConfig.from_params(params["ingest"]["teacher"]),
                           cache="data/teacher_cache.jsonl")
    results = teacher.label(texts)        # one Result per text, in order: labeled, review or queued

    routelet llm-baseline --holdout data/prepared/test.jsonl     # writes report/baselines.json

Torch-free on purpose (the server imports it to defer abstentions): only anthropic, httpx,
numpy, pydantic, the standard library and routelet.serving / routelet.data.taxonomy.
"""

from routelet.llm.config import Prices, TeacherConfig
from routelet.llm.result import Result
from routelet.llm.teacher import ClaudeTeacher, OpenAITeacher, Teacher, make_teacher

__all__ = ["ClaudeTeacher", "OpenAITeacher", "Prices", "Result", "Teacher", "TeacherConfig", "make_teacher"]
