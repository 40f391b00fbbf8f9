# Average recall of the proposals (COCOeval's matching, useCats=0) and recall-vs-IoU curves, for
# the run's folder and its ablation variants'.


rule evaluate:
    input:
        gt=split_data("json"),
        proposals="{folder}/{split}/proposals.h5",
        config=run_config_file,
    output:
        ar="{folder}/{split}/ar.json",
        curve="{folder}/{split}/ar.recall_iou.csv",
        plot=report(
            "{folder}/{split}/ar.recall_iou.png",
            caption="../report/recall_iou.rst",
            category="Segment proposals",
            labels={"figure": "recall vs IoU", "run": "{folder}", "split": "{split}"},
        ),
    log:
        "{folder}/logs/evaluate_{split}.log",
    benchmark:
        "{folder}/benchmarks/evaluate_{split}.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        # data.first_n applies to the evaluation images (data.val_json)
        settings=settings("evaluate", "data.first_n"),
    shell:
        "ifcn evaluate --config {input.config:q} --gt {input.gt:q}"
        " --proposals {input.proposals:q} --workers {threads} --out {output.ar:q}"
        " > {log:q} 2>&1"
