# Proposals for your own photos (no annotations): `snakemake predict --config
# predict='{images: DIR}'` -> results/<run>/predict/proposals.h5 and a picture of each photo's
# top proposals under results/<run>/predict/pictures/. Uses the run's NMS settings.


rule predict_infer:
    input:
        model=predict_checkpoint,
        config=run_config_file,
    output:
        temp(result("predict/candidates.h5")),
    log:
        log_file("predict_infer"),
    benchmark:
        benchmark_file("predict_infer")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    params:
        images=predict_images,
        settings=settings("model", "infer", "predict"),
    shell:
        "ifcn infer --config {input.config} --checkpoint {input.model}"
        " --image-dir {params.images} --device auto --out {output} > {log} 2>&1"


rule predict_nms:
    input:
        result("predict/candidates.h5"),
    output:
        result("predict/proposals.h5"),
    log:
        log_file("predict_nms"),
    benchmark:
        benchmark_file("predict_nms")
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


rule predict_pictures:
    input:
        result("predict/proposals.h5"),
    output:
        directory(result("predict/pictures")),
    log:
        log_file("predict_pictures"),
    benchmark:
        benchmark_file("predict_pictures")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        images=predict_images,
        top_n=setting("predict", "pictures"),
    shell:
        "ifcn viz --each --proposals {input} --image-root {params.images}"
        " --top-n {params.top_n} --out {output} > {log} 2>&1"


rule predict:
    input:
        predict_outputs,
