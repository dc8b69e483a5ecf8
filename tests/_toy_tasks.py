"""Tiny tasks for testing the pipeline machinery (importable by worker processes)."""

from __future__ import annotations

from dataclasses import dataclass

from processing.pipeline import Pipeline, PipelineStep
from processing.tasks.base import Connection, PipelineTask, TaskResult

DETECTOR = ("instrument", "visit", "detector")


@dataclass(frozen=True)
class DoubleConfig:
    factor: float = 2.0
    fail_on: float = 13.0


class DoubleTask(PipelineTask):
    name = "double"
    config_class = DoubleConfig
    dimensions = DETECTOR
    inputs = (Connection("value", "toy_input", DETECTOR, "StructuredData"),)
    outputs = (Connection("doubled", "toy_doubled", DETECTOR, "StructuredData"),)

    def run(self, value):
        if value["v"] == self.config.fail_on:
            raise ValueError(f"unlucky value {value['v']}")
        return TaskResult(doubled={"v": value["v"] * self.config.factor})


@dataclass(frozen=True)
class EmptyConfig:
    pass


class TripleTask(PipelineTask):
    name = "triple"
    config_class = EmptyConfig
    dimensions = DETECTOR
    # Input and output share a name on purpose (as calibrate's "exposure" does).
    inputs = (Connection("value", "toy_doubled", DETECTOR, "StructuredData"),)
    outputs = (Connection("value", "toy_tripled", DETECTOR, "StructuredData"),)

    def run(self, value):
        return TaskResult(value={"v": value["v"] * 3})


class SumTask(PipelineTask):
    name = "sum_visit"
    config_class = EmptyConfig
    dimensions = ("instrument", "visit")
    inputs = (Connection("doubled", "toy_doubled", DETECTOR, "StructuredData", multiple=True),)
    outputs = (Connection("summed", "toy_summed", ("instrument", "visit"), "ArrowTable"),)

    def run(self, doubled):
        import pyarrow as pa

        detectors = sorted(doubled)
        return TaskResult(summed=pa.table({"detector": detectors,
                                           "v": [doubled[d]["v"] for d in detectors]}))


TOY = Pipeline("toy", (PipelineStep(DoubleTask), PipelineStep(TripleTask),
                       PipelineStep(SumTask)))
