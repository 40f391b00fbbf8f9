# Inference at every scale, scattered over shards of the image list, gathered before NMS; for
# the run's folder and its ablation variants'.


rule infer:
    input:
        model="{folder}/train/model_final.pt",
        images=split_data("json"),
        config=run_config_file,
    output:
        temp("{folder}/{split}/shards/candidates-{shard}.h5"),
    log:
        "{folder}/logs/infer_{split}_{shard}.log",
    benchmark:
        "{folder}/benchmarks/infer_{split}_{shard}.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    params:
        image_root=split_data("images"),
        shards=config["infer"]["shards"],
        settings=settings("model", "infer"),
    shell:
        "ifcn infer --config {input.config:q} --checkpoint {input.model:q}"
        " --images {input.images:q} --image-root {params.image_root:q}"
        " --shard {wildcards.shard:q}/{params.shards:q} --device auto --out {output:q}"
        " > {log:q} 2>&1"


rule merge:
    input:
        shard_files,
    output:
        "{folder}/{split}/candidates.h5"
        if config["infer"]["keep_candidates"]
        else temp("{folder}/{split}/candidates.h5"),
    log:
        "{folder}/logs/merge_{split}.log",
    benchmark:
        "{folder}/benchmarks/merge_{split}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "ifcn merge --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule nms:
    input:
        candidates="{folder}/{split}/candidates.h5",
        config=run_config_file,
    output:
        "{folder}/{split}/proposals.h5",
    log:
        "{folder}/logs/nms_{split}.log",
    benchmark:
        "{folder}/benchmarks/nms_{split}.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=settings("nms"),
    shell:
        "ifcn nms --config {input.config:q} --candidates {input.candidates:q}"
        " --out {output:q} --workers {threads} > {log:q} 2>&1"
