"""A studio stopped the normal way (Ctrl-C, SIGTERM) loses nothing: every task it had queued,
was rendering or was submitting finishes after a restart, and none is submitted twice."""

import signal

import pytest

from tests.conftest import b64, picture
from tests.fakes.kling import Server
from tests.test_app import wait_for
from tests.test_restart import AK, HTTP, SK, Studio, statuses


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "stop_signal"), [(None, signal.SIGINT), (2, signal.SIGTERM)],
                         ids=["python-app-ctrl-c", "gunicorn-sigterm"])
def test_a_graceful_stop_puts_interrupted_work_back_and_a_restart_finishes_it(tmp_path, workers, stop_signal):
    fake = Server(polls_to_finish=2, access_key=AK, secret_key=SK, hang_seconds=4.0)
    fake.start()
    studio = Studio(tmp_path, fake.base_url, workers=workers)
    data_dir = tmp_path / "data"
    try:
        studio.env["HTTP_TIMEOUT_SECONDS"] = "2"
        studio.start()
        post = {"image": b64(picture()), "prompt": "slow zoom in"}
        # Rendering when the stop signal comes; it may end while the stop waits for the hanging submit.
        long_clip = {**post, "image": b64(picture(960, 600)), "duration": "10"}
        paid = [{"provider": "kling", "model_name": "kling-v1-6", "image": b64(picture(seed=i)),
                 "prompt": f"task {i}", "duration": "5", "mode": "std"} for i in range(3)]
        local = [HTTP.post(studio.base + "/generate", json=long_clip, timeout=10).json()["task_id"] for _ in range(2)]
        wait_for(lambda: {"submitted", "running"} & {statuses(data_dir)[i] for i in local}, 10, "a local render")
        fake.inject("submit", "hang", "hang", "hang")     # created, answered only after the client gave up
        # The first hanging submit holds one dispatch pass while the rest is queued, so the next
        # pass has a hanging submit ahead of four local tasks: the stop comes inside it.
        kling = [HTTP.post(studio.base + "/generate", json=paid[0], timeout=10).json()["task_id"]]
        wait_for(lambda: fake.submissions, 5, "the first submit to reach Kling")
        kling += [HTTP.post(studio.base + "/generate", json=body, timeout=10).json()["task_id"] for body in paid[1:]]
        local += [HTTP.post(studio.base + "/generate", json=post, timeout=10).json()["task_id"] for _ in range(4)]
        wait_for(lambda: len(fake.submissions) == 2, 10, "the second submit to reach Kling")
        studio.proc.send_signal(stop_signal)
        studio.proc.wait(40)

        after_stop = statuses(data_dir)
        assert "failed" not in after_stop.values(), after_stop      # our own stop is nobody's failure
        assert any(after_stop[i] == "queued" for i in local), after_stop

        studio.start()
        wait_for(lambda: all(s in ("succeeded", "failed", "cancelled") for s in statuses(data_dir).values()),
                 120, "every task to finish after the restart")
        final = statuses(data_dir)
        assert all(final[i] == "succeeded" for i in [*kling, *local]), final
        assert dict(fake.submissions) == {task_id: 1 for task_id in kling}
    finally:
        studio.stop()
        fake.stop()
