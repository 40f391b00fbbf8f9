# Inference at every scale, scattered over shards of the image list, gathered before NMS.


rule infer:
    input:
        model=result("train/model_final.pt"),
        images=split_json,
    output:
        temp(result("{split}/shards/candidates-{shard}.h5")),
    log:
        log_file("infer_{split}_{shard}"),
    benchmark:
        benchmark_file("infer_{split}_{shard}")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    params:
        config=CONFIG_FILE,
        image_root=split_images,
        shards=len(SHARDS),
        settings=section("model", "infer"),
    shell:
        "ifcn infer --config {params.config} --checkpoint {input.model}"
        " --images {input.images} --image-root {params.image_root}"
        " --shard {wildcards.shard}/{params.shards} --device auto --out {output} > {log} 2>&1"


rule merge:
    input:
        shard_files,
    output:
        maybe_temp(result("{split}/candidates.h5"), config["infer"]["keep_candidates"]),
    log:
        log_file("merge_{split}"),
    benchmark:
        benchmark_file("merge_{split}")
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
        result("{split}/candidates.h5"),
    output:
        result("{split}/proposals.h5"),
    log:
        log_file("nms_{split}"),
    benchmark:
        benchmark_file("nms_{split}")
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
        "ifcn nms --candidates {input} --out {output} --iou {params.iou}"
        " --top-n {params.top_n} --mask-threshold {params.mask_threshold}"
        " --workers {threads} > {log} 2>&1"
