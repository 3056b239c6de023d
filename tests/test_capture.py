"""The one definition of "f_B caught the trigger" (its test ASR, checkpoint by checkpoint) and of "its
loss singled out the poison" (what CBD needs), and the sentences every page reads from them."""

from __future__ import annotations

from cbd_core import capture


def lines(asr: list[float], accuracy: list[float]) -> list[dict]:
    return [{"phase": "f_B", "step": 32 * (i + 1), "attack_success_rate": a, "clean_accuracy": c}
            for i, (a, c) in enumerate(zip(asr, accuracy))]


def test_caught_is_read_at_the_checkpoint_it_happened():
    reading = capture.read_f_b({"f_b_capture": {"detection_auroc": 0.99}}, lines([0.2, 0.7, 1.0], [0.3, 0.49, 0.96]))
    assert (reading.caught, reading.caught_step, reading.caught_asr, reading.clean_accuracy_then) == (True, 64, 0.7, 0.49)
    assert reading.peak_asr == 1.0 and reading.singled_out is True


def test_loss_singled_out_is_one_threshold_the_defense_records_too():
    assert capture.loss_singled_out(capture.SINGLED_OUT_AUROC) is True
    assert capture.loss_singled_out(0.587) is False and capture.loss_singled_out(None) is None
    # An older record with only the flag keeps it; an AUROC, when recorded, decides.
    assert capture.read_f_b({"f_b_capture": {"captured": False}}).singled_out is False
    assert capture.read_f_b({"f_b_capture": {"captured": True, "detection_auroc": 0.5}}).singled_out is False


def test_the_two_answers_can_differ_and_the_sentences_say_why():
    wanet = capture.read_f_b({"f_b_capture": {"detection_auroc": 0.587, "test_attack_success_rate": 0.13}},
                             lines([0.27, 0.89, 0.13], [0.5, 0.8, 0.9]))
    said = " ".join(capture.f_b_sentences(wanet))
    assert wanet.caught is True and wanet.singled_out is False
    assert "caught the trigger at step 64: 89%" in said and "did not single out the poison" in said
    assert "Why both can be true" in said


def test_missing_records_leave_sentences_out():
    assert capture.f_b_sentences(capture.read_f_b({})) == []
    assert capture.f_b_sentences(capture.read_f_b(None, [{"phase": "f_C"}])) == []
    # Without metrics only f_B's last ASR can show it caught the trigger; a low one is "unknown", not "never".
    assert capture.read_f_b({"f_b_capture": {"test_attack_success_rate": 0.1}}).caught is None
    assert capture.read_f_b({"f_b_capture": {"test_attack_success_rate": 0.9}}).caught is True
