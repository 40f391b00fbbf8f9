# What a person reads. `figures` draws the pictures from the model, the proposals and the ground
# truth (the only stage here that runs the network); `report` reads only JSON, CSV and PNG files,
# so editing the report's text never reruns the network. With report.ablations set
# (`--config report='{ablations: true}'`) the ablation tables are built first.


rule figures:
    input:
        model=result("train/model_final.pt"),
        proposals=result("val/proposals.h5"),
        images=DATA["val_json"],
        config=run_config_file,
    output:
        index=result("figures/figures.json"),
        pictures=report(
            picture_files(), caption="../report/figures.rst", category="Pictures"
        ),
    log:
        log_file("figures"),
    benchmark:
        benchmark_file("figures")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        image_root=DATA["val_images"],
        pictures=config["report"]["pictures"],
        out=parent_of_output("index"),
        settings=settings("infer"),
    shell:
        "ifcn viz --config {input.config} --checkpoint {input.model}"
        " --proposals {input.proposals} --images {input.images} --image-root {params.image_root}"
        " --pictures {params.pictures} --device auto --out {params.out} > {log} 2>&1"


rule report:
    input:
        config=run_config_file,
        ar=result("val/ar.json"),
        plot=result("val/ar.recall_iou.png"),
        segm_eval=result("val/segm_eval.json"),
        figures=result("figures/figures.json"),
        pictures=picture_files(),
        train_log=result("train/train_log.csv"),
        ablations=report_ablation_files,
    output:
        report=result("report.md"),
        ar_table=report(
            result("tables/proposals_ar.csv"),
            caption="../report/proposals_ar.rst",
            category="Segment proposals",
            labels={"figure": "AR table", "run": RESULTS, "split": "val"},
        ),
        map_table=report(
            result("tables/segmentation_map.csv"),
            caption="../report/segmentation_map.rst",
            category="Instance segmentation",
            labels={"figure": "mAP table"},
        ),
        loss=report(
            result("train/loss.png"),
            caption="../report/loss.rst",
            category="Training",
            labels={"figure": "loss curve"},
        ),
    log:
        log_file("report"),
    benchmark:
        benchmark_file("report")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        ablations=report_ablation_options,
        benchmarks=result("benchmarks"),
        settings=run_settings,
    shell:
        "ifcn report --config {input.config} --ar {input.ar} --segm-eval {input.segm_eval}"
        " --figures {input.figures} --train-log {input.train_log} --loss-plot {output.loss}"
        " --ar-table {output.ar_table} --map-table {output.map_table} {params.ablations}"
        " --benchmarks {params.benchmarks}"
        " --out {output.report} > {log} 2>&1"
