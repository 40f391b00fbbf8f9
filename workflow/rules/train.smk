# Training: one image per process per step; several GPUs of one job run under torchrun. Serves
# the run's folder and its ablation variants' (results/<run>/ablation/<variant>). No protected():
# the weights survive reruns because Snakemake reruns train only when its settings change.


rule train:
    input:
        train=DATA["train_json"],
        # `ifcn train` refuses evaluation images among the training images (paper §4.1)
        val=DATA["val_json"],
        config=run_config_file,
    output:
        model="{folder}/train/model_final.pt",
        log="{folder}/train/train_log.csv",
    log:
        "{folder}/logs/train.log",
    benchmark:
        "{folder}/benchmarks/train.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=600,
        gpu=0,
    params:
        out=parent_of_output("model"),
        launcher=train_launcher,
        settings=trained_by("train"),
    shell:
        "{params.launcher:q} train --config {input.config:q} --out {params.out:q}"
        " --resume auto > {log:q} 2>&1"
