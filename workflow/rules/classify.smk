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
        out=parent_of_output("model"),
        settings=trained_by("classify"),
    shell:
        "ifcn classify train --config {input.config:q} --proposals {input.proposals:q}"
        " --gt {input.gt:q} --init-from {input.proposal_model:q} --out {params.out:q}"
        " --resume auto --device auto > {log:q} 2>&1"


rule classify_predict:
    input:
        model=result("classify/model_final.pt"),
        proposals=result("val/proposals.h5"),
        images=DATA["val_json"],
        config=run_config_file,
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
        settings=settings(*(f"classify.{key}" for key in prediction_keys())),
    shell:
        "ifcn classify predict --config {input.config:q} --checkpoint {input.model:q}"
        " --proposals {input.proposals:q} --images {input.images:q} --device auto"
        " --out {output:q} > {log:q} 2>&1"


rule classify_evaluate:
    input:
        gt=DATA["val_json"],
        results=result("val/segm.json"),
        config=run_config_file,
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
        settings=settings("classify.ap", "data.first_n"),
    shell:
        "ifcn classify evaluate --config {input.config:q} --gt {input.gt:q}"
        " --results {input.results:q} --out {output:q} > {log:q} 2>&1"
