# Downstream classifier (MNC stage 3 on the proposals, paper Table 4): two-step training as in
# the paper, proposals of the training images first, then the classifier on them.


rule classify_train:
    input:
        proposals=result("train/proposals.h5"),
        gt=DATA["train_json"],
        proposal_model=result("train/model_final.pt"),
        config=run_config_file,
    output:
        model=result("classify/model_final.pt"),
    log:
        log_file("classify_train"),
    benchmark:
        benchmark_file("classify_train")
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=600,
        gpu=0,
    params:
        images=DATA["train_images"],
        out=parent_of_output("model"),
        settings=classify_training_settings(),
    shell:
        "ifcn classify train --config {input.config} --proposals {input.proposals}"
        " --gt {input.gt} --images {params.images} --init-from {input.proposal_model}"
        " --out {params.out} --resume auto --device auto > {log} 2>&1"


rule classify_predict:
    input:
        model=result("classify/model_final.pt"),
        proposals=result("val/proposals.h5"),
        images=DATA["val_json"],
    output:
        result("val/segm.json"),
    log:
        log_file("classify_predict"),
    benchmark:
        benchmark_file("classify_predict")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    params:
        image_root=DATA["val_images"],
        nms_iou=setting("classify", "nms_iou"),
        score_threshold=setting("classify", "score_threshold"),
        detections=setting("classify", "detections_per_image"),
    shell:
        "ifcn classify predict --checkpoint {input.model} --proposals {input.proposals}"
        " --images {input.images} --image-root {params.image_root} --nms-iou {params.nms_iou}"
        " --score-threshold {params.score_threshold} --detections-per-image {params.detections}"
        " --device auto --out {output} > {log} 2>&1"


rule classify_evaluate:
    input:
        gt=DATA["val_json"],
        results=result("val/segm.json"),
    output:
        result("val/segm_eval.json"),
    log:
        log_file("classify_evaluate"),
    benchmark:
        benchmark_file("classify_evaluate")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        first_n=first_n_option,
    shell:
        "ifcn classify evaluate --gt {input.gt} --results {input.results} {params.first_n}"
        " --out {output} > {log} 2>&1"
