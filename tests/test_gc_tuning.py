"""The collector policy of bulk runs (`fhir_gateway.gc_tuning`)."""

import gc

from fhir_gateway.gc_tuning import YOUNG_THRESHOLD, bulk_gc


def test_bulk_runs_freeze_the_heap_and_put_the_collector_back_when_the_last_one_ends():
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with bulk_gc():
        assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
        assert gc.get_freeze_count() > frozen
        with bulk_gc():  # nested (an import preparing inline): still one run
            pass
        assert gc.get_threshold()[0] >= YOUNG_THRESHOLD and gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_put_back_when_a_bulk_run_fails():
    before = gc.get_threshold()
    try:
        with bulk_gc():
            raise RuntimeError("a record broke the run")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
