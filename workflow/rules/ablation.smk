# The paper's ablations as targets: `snakemake ablation_k` (Table 1, k² score maps) and
# `snakemake ablation_head` (Table 2, InstanceFCN vs ~DeepMask, crop vs full-image training).
# Each variant is the run's config with a few keys overridden (ifcn.ablation names them), trained,
# inferred (one shard), NMS'd and evaluated under results/<run>/ablation/<variant>/ by the same
# ifcn commands as the main run. A variant equal to the main run reuses its val/ar.json, and
# variants equal to each other share one training.
include: "report_common.smk"


rule ablation_config:
    output:
        config=result("ablation/{variant}/config.yaml"),
    log:
        log_file("ablation_config_{variant}"),
    benchmark:
        benchmark_file("ablation_config_{variant}")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        config=CONFIG_FILE,
        overrides=ablation_overrides,
        settings=ablation_section("data", "model", "train", "infer"),
    shell:
        "ifcn ablation config --config {params.config} {params.overrides}"
        " --out {output.config} > {log} 2>&1"


# The config file is ancient(): it is rewritten when any of its sections changes, but only a
# change of the sections a stage reads (its `settings`) reruns that stage, as in the main run.
rule ablation_train:
    input:
        train=DATA["train_json"],
        config=ancient(result("ablation/{variant}/config.yaml")),
    output:
        model=protected(result("ablation/{variant}/train/model_final.pt")),
    log:
        log_file("ablation_train_{variant}"),
    benchmark:
        benchmark_file("ablation_train_{variant}")
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
        settings=ablation_section("model", "train"),
    shell:
        "{params.launcher} train --config {input.config} --out {params.out}"
        " --resume auto > {log} 2>&1"


rule ablation_infer:
    input:
        model=result("ablation/{variant}/train/model_final.pt"),
        images=DATA["val_json"],
        config=ancient(result("ablation/{variant}/config.yaml")),
    output:
        candidates=maybe_temp(
            result("ablation/{variant}/val/candidates.h5"),
            config["infer"]["keep_candidates"],
        ),
    log:
        log_file("ablation_infer_{variant}"),
    benchmark:
        benchmark_file("ablation_infer_{variant}")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    params:
        image_root=DATA["val_images"],
        settings=ablation_section("model", "infer"),
    shell:
        "ifcn infer --config {input.config} --checkpoint {input.model}"
        " --images {input.images} --image-root {params.image_root}"
        " --shard 0/1 --device auto --out {output.candidates} > {log} 2>&1"


rule ablation_nms:
    input:
        candidates=result("ablation/{variant}/val/candidates.h5"),
    output:
        proposals=result("ablation/{variant}/val/proposals.h5"),
    log:
        log_file("ablation_nms_{variant}"),
    benchmark:
        benchmark_file("ablation_nms_{variant}")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        iou=config["nms"]["iou"],
        top_n=config["nms"]["top_n"],
        mask_threshold=config["nms"]["mask_threshold"],
    shell:
        "ifcn nms --candidates {input.candidates} --out {output.proposals}"
        " --iou {params.iou} --top-n {params.top_n} --mask-threshold {params.mask_threshold}"
        " --workers {threads} > {log} 2>&1"


rule ablation_evaluate:
    input:
        gt=DATA["val_json"],
        proposals=result("ablation/{variant}/val/proposals.h5"),
    output:
        ar=result("ablation/{variant}/val/ar.json"),
        curve=result("ablation/{variant}/val/recall_iou.csv"),
        plot=result("ablation/{variant}/val/recall_iou.png"),
    log:
        log_file("ablation_evaluate_{variant}"),
    benchmark:
        benchmark_file("ablation_evaluate_{variant}")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        max_dets=config["evaluate"]["max_dets"],
        matching=config["evaluate"]["matching"],
        first_n=ablation_first_n(),
    shell:
        "ifcn evaluate --gt {input.gt} --proposals {input.proposals}"
        " --max-dets {params.max_dets} --matching {params.matching} {params.first_n}"
        " --workers {threads} --out {output.ar} > {log} 2>&1"


rule ablation_k:
    input:
        ar=ablation_table_inputs("k"),
    output:
        table=result("ablation_k.csv"),
        plot=result("ablation_k.png"),
    log:
        log_file("ablation_k"),
    benchmark:
        benchmark_file("ablation_k")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        variants=ablation_names("k"),
    shell:
        "ifcn ablation table --ar {input.ar} --variants {params.variants}"
        " --plot {output.plot} --out {output.table} > {log} 2>&1"


rule ablation_head:
    input:
        ar=ablation_table_inputs("head"),
    output:
        table=result("ablation_head.csv"),
        plot=result("ablation_head.png"),
    log:
        log_file("ablation_head"),
    benchmark:
        benchmark_file("ablation_head")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        variants=ablation_names("head"),
    shell:
        "ifcn ablation table --ar {input.ar} --variants {params.variants}"
        " --plot {output.plot} --out {output.table} > {log} 2>&1"
