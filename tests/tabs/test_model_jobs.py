"""tabs.common.model_job: a tab's model jobs run on the torch thread (engine.device), other events do not."""

from __future__ import annotations

import threading

from engine import device


def test_the_tabs_model_jobs_run_there_and_other_events_do_not():
    from tabs.common import model_job, user_errors

    torch_thread = device.on_torch_thread(threading.get_ident)

    @model_job
    def job():
        return threading.get_ident()

    @model_job
    def steps():
        yield threading.get_ident()
        yield threading.get_ident()

    @user_errors
    def cheap():
        return threading.get_ident()

    out = []
    caller = threading.Thread(target=lambda: out.extend([job(), *steps(), cheap()]))
    caller.start()
    caller.join()
    assert out[:3] == [torch_thread] * 3 and out[3] == caller.ident
