# Inference at every scale, scattered over shards of the image list, gathered before NMS; for
# the run's folder and its ablation variants'.


rule infer:
    input:
        model="{folder}/train/model_final.pt",
        images=split_json,
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
        image_root=split_images,
        shards=len(SHARDS),
        settings=settings("model", "infer"),
    shell:
        "ifcn infer --config {input.config} --checkpoint {input.model}"
        " --images {input.images} --image-root {params.image_root}"
        " --shard {wildcards.shard}/{params.shards} --device auto --out {output} > {log} 2>&1"


rule merge:
    input:
        shard_files,
    output:
        maybe_temp("{folder}/{split}/candidates.h5", config["infer"]["keep_candidates"]),
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
        "ifcn merge --inputs {input} --out {output} > {log} 2>&1"


rule nms:
    input:
        "{folder}/{split}/candidates.h5",
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
        iou=setting("nms", "iou"),
        top_n=setting("nms", "top_n"),
        mask_threshold=setting("nms", "mask_threshold"),
    shell:
        "ifcn nms --candidates {input} --out {output} --iou {params.iou}"
        " --top-n {params.top_n} --mask-threshold {params.mask_threshold}"
        " --workers {threads} > {log} 2>&1"
