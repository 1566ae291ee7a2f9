"""The generator of the example task: a RULER needle task with other key/value types and haystack."""

from gdn2_eval.ruler import TaskSpec
from gdn2_eval.tasks.ruler.utils import build_dataset, process_results  # noqa: F401  (scoring: string_match_all)

SPEC = TaskSpec("niah_uuid_noise", haystack="noise", key_type="uuids", value_type="uuids",
                description="one UUID key -> UUID, in RULER's repeated filler")


def niah_uuid_noise(**metadata):
    return build_dataset(SPEC, **metadata)
