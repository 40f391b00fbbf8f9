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
        out=parent_of_output("index"),
        settings=settings("data.val_images", "infer", "report.pictures"),
    shell:
        "ifcn viz --config {input.config:q} --checkpoint {input.model:q}"
        " --proposals {input.proposals:q} --images {input.images:q} --pictures"
        " --device auto --out {params.out:q} > {log:q} 2>&1"


rule report:
    input:
        config=run_config_file,
        ar=result("val/ar.json"),
        plot=result("val/ar.recall_iou.png"),
        segm_eval=result("val/segm_eval.json"),
        figures=result("figures/figures.json"),
        pictures=picture_files(),
        train_log=result("train/train_log.csv"),
        ablations=ablation_tables,
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
        ablations=report_ablations,
        benchmarks=result("benchmarks"),
        settings=settings(*config),
    shell:
        "ifcn report --config {input.config:q} --ar {input.ar:q}"
        " --segm-eval {input.segm_eval:q} --figures {input.figures:q}"
        " --train-log {input.train_log:q} --loss-plot {output.loss:q}"
        " --ar-table {output.ar_table:q} --map-table {output.map_table:q}"
        " {params.ablations:q} --benchmarks {params.benchmarks:q}"
        " --out {output.report:q} > {log:q} 2>&1"
