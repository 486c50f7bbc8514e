"""`kadapt intrinsic-dim`'s choice of groups from a finished sweep's summary."""


def test_groups_whose_d90_the_head_alone_decides_are_recommended_last():
    from peft_kadapt.training.intrinsic_sweep import rank_groups

    def entry(reference, d90, head=0.70):
        return {"reference_validation_accuracy": reference, "d90": d90, "validation_curve": {"0": head, "100": 0.7}}

    summary = {
        "q": entry(0.54, 0),  # d90 = 0 only because its reference is below the head alone
        "fc2": entry(0.65, 0),
        "v": entry(0.86, None),  # gains, but 90 % of the gain is not reached within the dims
        "fc1": entry(0.88, None),
        "o": entry(0.84, 10_000),
    }
    assert rank_groups(summary) == ["o", "fc1", "v", "fc2", "q"]
    small_gains = {  # full fine-tuning gains 5-12 points: 90 % of a 0.75 reference is below the head alone's 0.70
        "k": entry(0.752, 0),
        "o": entry(0.768, 0),
        "v": entry(0.818, 100_000),
        "fc1": entry(0.798, 10_000),
    }
    assert rank_groups(small_gains) == ["fc1", "v", "o", "k"]
    no_head = {g: {k: v for k, v in e.items() if k != "validation_curve"} for g, e in summary.items()}
    assert rank_groups(no_head)[:2] == ["fc2", "q"]  # without a d = 0 run: the plain d90 order
