# Training: one image per process per step; several GPUs of one job run under torchrun.


rule train:
    input:
        train=DATA["train_json"],
    output:
        model=protected(result("train/model_final.pt")),
    log:
        log_file("train"),
    benchmark:
        benchmark_file("train")
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=600,
        gpu=0,
    params:
        config=CONFIG_FILE,
        out=parent_of_output("model"),
        launcher=train_launcher,
        settings=section("model", "train"),
    shell:
        "{params.launcher} train --config {params.config} --out {params.out}"
        " --resume auto > {log} 2>&1"
