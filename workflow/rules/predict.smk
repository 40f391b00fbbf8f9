# Proposals for your own photos (no annotations): `snakemake predict --config
# predict='{images: DIR}'` -> results/<run>/predict/proposals.h5 and a picture of each photo's
# top proposals under results/<run>/predict/pictures/. Uses the run's NMS settings. What the
# photos are is a rerun trigger (predict_photos): adding, removing or changing one reruns it.


rule predict_infer:
    input:
        # predict.checkpoint, or the run's own trained model
        model=config["predict"]["checkpoint"] or result("train/model_final.pt"),
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
        photos=predict_photos,
        settings=settings("model", "infer", "predict"),
    shell:
        "ifcn infer --config {input.config:q} --checkpoint {input.model:q}"
        " --image-dir {params.images:q} --device auto --out {output:q} > {log:q} 2>&1"


rule predict_nms:
    input:
        candidates=result("predict/candidates.h5"),
        config=run_config_file,
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
        settings=settings("nms"),
    shell:
        "ifcn nms --config {input.config:q} --candidates {input.candidates:q}"
        " --out {output:q} --workers {threads} > {log:q} 2>&1"


rule predict_pictures:
    input:
        proposals=result("predict/proposals.h5"),
        config=run_config_file,
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
        settings=settings("predict.pictures"),
    shell:
        "ifcn viz --each --config {input.config:q} --proposals {input.proposals:q}"
        " --image-root {params.images:q} --out {output:q} > {log:q} 2>&1"


rule predict:
    input:
        predict_outputs,
