# The page a person reads: tables and pictures of this run, and the ablation tables when
# report.ablations is set (`snakemake --config report='{ablations: true}'` builds them first).


include: "report_common.smk"


rule report:
    input:
        ar=result("val/ar.json"),
        segm_eval=result("val/segm_eval.json"),
        plot=result("val/recall_iou.png"),
        proposals=result("val/proposals.h5"),
        model=result("train/model_final.pt"),
        images=DATA["val_json"],
        ablations=report_ablation_files,
    output:
        report=result("report.md"),
        pictures=report_pictures(),
    log:
        log_file("report"),
    benchmark:
        benchmark_file("report")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        config=CONFIG_FILE,
        image_root=DATA["val_images"],
        pictures=config["report"]["pictures"],
        ablations=report_ablation_options,
    shell:
        "ifcn report --config {params.config} --ar {input.ar} --segm-eval {input.segm_eval}"
        " {params.ablations}"
        " --proposals {input.proposals} --checkpoint {input.model} --images {input.images}"
        " --image-root {params.image_root} --pictures {params.pictures}"
        " --device auto --out {output.report} > {log} 2>&1"
