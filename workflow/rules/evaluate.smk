# Average recall of the proposals (COCOeval's matching, useCats=0) and recall-vs-IoU curves, for
# the run's folder and its ablation variants'.


rule evaluate:
    input:
        gt=split_json,
        proposals="{folder}/{split}/proposals.h5",
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
        max_dets=setting("evaluate", "max_dets"),
        matching=setting("evaluate", "matching"),
        first_n=first_n_option,
    shell:
        "ifcn evaluate --gt {input.gt} --proposals {input.proposals}"
        " --max-dets {params.max_dets} --matching {params.matching} {params.first_n}"
        " --workers {threads} --out {output.ar} > {log} 2>&1"
